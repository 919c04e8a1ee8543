# nxjobs developer entry points. `make test` is the one CI runs (.ci/run).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PIP_FLAGS   := -q --disable-pip-version-check
PYTEST_ARGS ?=
COMPOSE_FILE := docker-compose.yml

.PHONY: help install redis tools lint test demo bench check-compose check-deploy clean

help: ## List targets
	@echo "nxjobs make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{ printf "  %-14s %s\n", $$1, $$2 }'

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Re-runs pip only when pyproject.toml changes (delete the stamp to force it).
$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install $(PIP_FLAGS) -e '.[dev]'
	@touch $@

# Debian packages the checks in `make test` call (command:package).
# kubectl renders deploy/kubernetes (its built-in kustomize), promtool checks deploy/prometheus.
TOOLS := docker-compose:docker-compose kubectl:kubernetes-client promtool:prometheus

install: $(STAMP) redis tools ## Create .venv, pip install -e '.[dev]', ensure redis-server and the check tools

# Cheap when redis-server is already there (lookup only); installs it via
# apt-get when root and missing. Not stamped: a removed binary is noticed.
redis:
	@redis_bin="$$(bash scripts/ensure-redis.sh)"; echo "redis-server: $$redis_bin"

tools:
	@bash scripts/ensure-tools.sh $(TOOLS)

# The config for each lives in pyproject.toml; the contracts are the import direction.
lint: $(STAMP) ## ruff (lint and format check), mypy and the import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: install lint ## Lint, then run the test suite (PYTEST_ARGS=... passed to pytest)
	$(VPY) -m pytest $(PYTEST_ARGS)

demo: install ## Run the end-to-end demo (python -m workers.demo)
	$(VPY) -m workers.demo

bench: install ## Run every bench/*.py script
	@shopt -s nullglob; scripts=(bench/*.py); \
	if (( $${#scripts[@]} == 0 )); then echo "bench: no bench/*.py scripts, nothing to run"; exit 0; fi; \
	for s in "$${scripts[@]}"; do echo "== $$s"; $(VPY) "$$s"; done

# Strict YAML parse of every *.yml/*.yaml (duplicate keys are errors, as in Compose v2,
# while Compose v1 keeps the last one), then `config -q` with and without the sandbox
# profile. The ${VAR:?} secrets get dummy values here: this checks structure, not .env.
check-compose: $(STAMP) ## Strict-parse all YAML, validate docker-compose.yml (installs Debian docker-compose if root)
	$(VPY) scripts/check_yaml.py --repo $(COMPOSE_FILE)
	@check_env="$$($(VPY) scripts/check_yaml.py --required-env $(COMPOSE_FILE))"; \
	validate() { \
		env $$check_env "$$@" -f $(COMPOSE_FILE) config -q && \
		env $$check_env "$$@" -f $(COMPOSE_FILE) --profile sandbox config -q && \
		echo "$(COMPOSE_FILE): valid ($$*, with and without --profile sandbox)"; \
	}; \
	if docker-compose version >/dev/null 2>&1; then \
		validate docker-compose; \
	elif docker compose version >/dev/null 2>&1; then \
		validate docker compose; \
	elif [[ $$(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then \
		echo "check-compose: installing Debian docker-compose" >&2; \
		apt-get update -qq >&2; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >&2; \
		validate docker-compose; \
	else \
		echo "check-compose: SKIPPED - neither docker-compose nor 'docker compose' found;" \
		     "install one (apt-get install docker-compose) to validate $(COMPOSE_FILE)"; \
	fi

# The deploy/ checks alone (also part of `make test`): kustomize renders, schemas, probes,
# promtool, and the live scrape that every metric they name is served.
check-deploy: install ## Check deploy/: kubectl kustomize, kubernetes-validate, promtool, metric names
	$(VPY) -m pytest -q tests/unit/test_deploy.py tests/integration/test_deploy_metrics.py \
		tests/integration/test_deploy_pods.py

clean: ## Remove .venv, caches and .run/
	rm -rf $(VENV) .run .pytest_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
