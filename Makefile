# The README's two commands: `make up` (set up and run the whole local stack) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Every dependency group of pyproject.toml: a development machine runs every role.
EXTRAS := serving,api,worker,local,dev,deploy,containers
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

help:
	@echo "make up      set up everything and start the local stack in the background"
	@echo "make down    stop the local stack (data in .data/ is kept)"
	@echo "make test    set up everything, lint (ruff), type-check (mypy) and run the whole test suite"
	@echo "make bench   run the benchmarks and write bench/report/ (~12 min; BENCH_ARGS=--quick: ~4)"
	@echo "make chaos   kill -9 each server mid-burst, check nothing is lost: bench/report/chaos.md (~3 min; CHAOS_ARGS=--short: ~2)"
	@echo "make synth   write the AWS CloudFormation template to deploy/cdk.out/ (offline; docs/deploy.md)"
	@echo "make images  build the container images with podman (docs/containers.md)"
	@echo "make compose-smoke  run docker/compose.yaml with podman-compose, one upload to DONE, tear down"

# Python environment: rebuilt when pyproject.toml changes.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

venv: $(INSTALLED)

# Debian packages the browser test needs (Chromium); installed once.
system-deps:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# podman (with runc) builds and runs the images here; debootstrap makes their base images offline.
container-deps:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
	  || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq podman runc debootstrap >/dev/null; }

# Node packages of the local stack (dynalite), pinned by package-lock.json.
NODE_DEPS := tools/node/node_modules/.package-lock.json
$(NODE_DEPS): tools/node/package.json tools/node/package-lock.json
	npm ci --prefix tools/node --no-audit --no-fund --loglevel=error
	touch $@

# The web page's OpenID Connect client: oidc-client-ts bundled by esbuild into one ES module.
# Committed (containers and pip installs have no Node); rebuilt from the locked packages when they
# change, byte for byte the same otherwise (tests/graphql_api/test_web_vendor.py checks).
WEB_VENDOR := graphql_api/static/vendor/oidc-client-ts.js
$(WEB_VENDOR): $(NODE_DEPS) tools/node/web/build.mjs tools/node/web/oidc-client.js
	npm run --prefix tools/node --silent build-web

web: $(NODE_DEPS) $(WEB_VENDOR)

deps: venv system-deps $(wildcard $(NODE_DEPS))

up: venv
	@[ ! -f tools/node/package.json ] || $(MAKE) --no-print-directory web
	$(BIN)/udagram up

down:
	@[ ! -x $(BIN)/udagram ] || $(BIN)/udagram down

status:
	$(BIN)/udagram status

# Lint and type-check first ([tool.ruff], [tool.mypy] in pyproject.toml): seconds, and they
# fail before minutes of servers.
test: venv system-deps
	@[ ! -f tools/node/package.json ] || $(MAKE) --no-print-directory web
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	@[ ! -f tools/node/package.json ] || $(MAKE) --no-print-directory $(NODE_DEPS)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The whole local stack on free ports, each server killed in turn mid-burst (bench/chaos.py).
chaos: venv
	@[ ! -f tools/node/package.json ] || $(MAKE) --no-print-directory $(NODE_DEPS)
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

# The AWS CDK app (deploy/) runs on jsii, which starts Node: silence its Node-version banners.
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

# CloudFormation for AWS, offline (no account, no Docker); context as JSON, e.g.
# make synth SYNTH_CONTEXT='{"model_server_gpu": "true"}'. Fails on unacknowledged cdk-nag findings.
synth: venv
	CDK_CONTEXT_JSON='$(SYNTH_CONTEXT)' $(BIN)/python deploy/app.py

# The model-server, API, worker and stand-in images (tools/containers.py; docs/containers.md).
images: venv container-deps
	$(BIN)/python tools/containers.py build $(IMAGES_ARGS)

# docker/compose.yaml under podman-compose on free ports: one upload to DONE, then torn down
# (tests/e2e/test_compose.py, marker `containers`, which `make test` leaves out).
compose-smoke: images
	$(BIN)/python -m pytest -m containers tests/e2e/test_compose.py -rP $(PYTEST_ARGS)

.PHONY: help venv system-deps container-deps deps web up down status test bench chaos synth images compose-smoke
