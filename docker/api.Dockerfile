# syntax=docker/dockerfile:1
# The GraphQL API and web page (`udagram api`). Build from the repository root:
#   docker build -f docker/api.Dockerfile -t udagram/api .
# The first stage is identical in api/worker/model-server Dockerfiles, so builds share its layers.
FROM python:3.11-slim AS app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# CPU-only torch wheels (PyPI's default torch is the CUDA build, gigabytes larger).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY udagram ./udagram
COPY handlers ./handlers
COPY graphql_api ./graphql_api
COPY workers ./workers
RUN pip install . && useradd --create-home --uid 10001 udagram && mkdir /data && chown udagram /data
ENV UDAGRAM_DATA_DIR=/data UDAGRAM_LOG_FORMAT=json

FROM app
USER udagram
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s \
  CMD ["python", "-c", "from udagram.settings import get_settings; from udagram.stack import health; health.api(get_settings())"]
CMD ["udagram", "api"]
