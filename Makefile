# jit-broker: every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := openssh-server openssh-client nftables iproute2 procps
APT_COMMANDS := /usr/sbin/sshd /usr/bin/ssh /usr/sbin/nft /usr/sbin/ip /usr/bin/pkill

.PHONY: test lint typecheck pytest demo bench fuzz lab setup clean

test: setup lint typecheck pytest ## every check: ruff, mypy, pytest (unit, integration, end-to-end)

setup: $(VENV)/.installed node_modules/.installed apt

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml cli/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e . -e ./cli
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

apt:
	@missing=""; for c in $(APT_COMMANDS); do test -x $$c || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	  else echo "apt: not root; end-to-end tests that need $(APT_PACKAGES) will be skipped"; fi; \
	fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup ## grant -> the port opens for that address only -> revoke, with real packets
	$(PY) -m lab.demo

bench: setup ## prints the benchmark table
	$(PY) -m bench

fuzz: setup ## a longer schemathesis run against the broker's OpenAPI
	JIT_FUZZ_EXAMPLES=20000 $(VENV)/bin/pytest -q tests/security/test_fuzz_openapi.py

lab: setup ## the local Azure lab in the foreground
	$(VENV)/bin/jit-lab up

clean:
	rm -rf $(VENV) node_modules .lab .pytest_cache .mypy_cache .ruff_cache
