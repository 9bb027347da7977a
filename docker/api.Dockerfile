# syntax=docker/dockerfile:1
# The GraphQL API and web page (`udagram api`): the shared dependencies and the `api` group of
# pyproject.toml only (no torch, no Pillow). Build from the repository root:
#   docker build -f docker/api.Dockerfile -t udagram/api .
# (`make images` builds every image with podman: docs/containers.md.)
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 udagram && mkdir /data && chown udagram /data
WORKDIR /app
# Dependencies first, from pyproject.toml alone: a code change does not re-install them.
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py api > requirements.txt && pip install -r requirements.txt
COPY README.md ./
COPY udagram ./udagram
COPY handlers ./handlers
COPY graphql_api ./graphql_api
COPY workers ./workers
COPY udagram_cli ./udagram_cli
RUN pip install --no-deps .
ENV UDAGRAM_DATA_DIR=/data UDAGRAM_LOG_FORMAT=json
USER udagram
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=10s --start-period=20s \
  CMD ["python", "-c", "from udagram.settings import get_settings; from udagram.stack import health; health.api(get_settings())"]
CMD ["udagram", "api"]
