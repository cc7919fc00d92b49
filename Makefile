# PoseGen Operator — developer entry points. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STATE ?= .local
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := postgresql redis-server prometheus containerd runc containernetworking-plugins buildah debootstrap gcc libc6-dev
PYTEST_ARGS ?=

.PHONY: help venv system-deps binaries up down status images demo test test-unit test-integration test-e2e \
        lint typecheck format bench bench-full soak clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

venv: $(VENV)/.installed ## the project virtualenv, with the package installed editable
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

system-deps: ## Debian packages the local stack needs (Postgres, Redis, Prometheus, containerd, runc, CNI, buildah, debootstrap)
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

binaries: ## build the control plane, kubelet, kubectl, etcd, helm and the registry (cached in ~/.cache/posegen)
	@bash devstack/build-binaries.sh >/dev/null

up: venv system-deps binaries ## start the local stack in the background (idempotent): a kubelet node where containers can run
	@$(PY) -m posegen_devstack up --state-dir $(STATE)

down: ## stop every process `make up` started, its containers, and unmount what kubelet mounted
	@[ -x $(PY) ] && $(PY) -m posegen_devstack down --state-dir $(STATE) || true

status: venv ## what is running, and where
	@$(PY) -m posegen_devstack status --state-dir $(STATE)

images: up ## build the operator and worker images with buildah and push them to the stack's registry
	@$(PY) -m posegen_devstack images --state-dir $(STATE)

demo: up ## the whole system locally: submit a generation, watch it complete, show the images
	@$(PY) -m posegen_devstack.demo --state-dir $(STATE)

lint: venv ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: venv ## strict mypy
	$(VENV)/bin/mypy

test-unit: venv ## pure unit tests, no services
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv system-deps binaries ## against the real local control plane, Postgres, Redis, Prometheus
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: venv system-deps binaries ## scenarios that kill real processes
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test: venv system-deps binaries lint typecheck ## everything CI runs
	$(PY) -m pytest tests $(PYTEST_ARGS)

clean: down ## remove the local state (not the binary cache)
	rm -rf $(STATE)

# ---- benchmarks (docs/BENCHMARKS.md): each starts its own stack in a temporary state dir -----------
bench: venv system-deps binaries ## quick benchmarks and fault figures (minutes); results in bench/results/
	$(PY) -m bench.run_all --quick

bench-full: venv system-deps binaries ## the same at full counts (about an hour or more on 2 cores)
	$(PY) -m bench.run_all --full

# ---- randomized fault soak (docs/RELIABILITY.md): its own stack too; exits non-zero on a failed ledger --
MINUTES ?= 5
SEED ?=
SOAK_ARGS ?=
soak: venv system-deps binaries ## random faults under load for MINUTES (5), SEED=n to repeat one; bench/results/soak.json
	$(PY) -m bench.soak --minutes $(MINUTES) $(if $(SEED),--seed $(SEED)) $(SOAK_ARGS)
