# jit-broker: every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CHECKOV_VENV := $(VENV)/checkov
PINS_VENV := $(VENV)/pins
PIP_TOOLS := pip==26.3 pip-tools==7.6.2
PIP_COMPILE := $(PINS_VENV)/bin/pip-compile --quiet --strip-extras --no-header --annotation-style=line \
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(PINS_ARGS)
# chromium: Debian's browser, which the web page's Playwright tests drive (tests/web; no browser download)
APT_PACKAGES := openssh-server openssh-client nftables iproute2 procps chromium
APT_COMMANDS := /usr/sbin/sshd /usr/bin/ssh /usr/sbin/nft /usr/sbin/ip /usr/bin/pkill /usr/bin/chromium
# The web page (docs/web.md): web/ bundled with MSAL.js from node_modules into jitbroker/static/, which the
# broker serves at / and the Functions package ships.
WEB_SOURCES := $(wildcard web/*.html web/*.css web/*.svg web/*.mjs web/src/*.js)
WEB_BUILT := jitbroker/static/app.js

.PHONY: test lint typecheck pytest demo bench fuzz lab setup pins clean web

test: setup lint typecheck pytest ## every check: ruff, mypy, pytest (unit, integration, end-to-end)

setup: $(VENV)/.installed $(CHECKOV_VENV)/.installed node_modules/.installed web apt

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml cli/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e . -e ./cli
	touch $@

# checkov in a venv of its own (inside .venv, so git, the Functions package and `make clean` treat it as .venv):
# its dependency tree caps packages the broker needs newer. tests/infra/test_checkov.py runs it from there.
$(CHECKOV_VENV)/.installed: requirements-checkov.txt | $(VENV)/.installed
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q -r requirements-checkov.txt
	touch $@

# Regenerate the exact pins from the .in files. pip-compile keeps every existing pin the .in files still allow,
# so a run without changes reproduces the files byte for byte; `make pins PINS_ARGS=--upgrade` moves every
# package to the newest allowed version, `PINS_ARGS="-P fastapi"` just one. Each .txt file's header is its
# .in file's `##` lines. requirements-dev.in is constrained by requirements.txt, so it is compiled second.
pins:
	test -x $(PINS_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(PINS_VENV) && \
	  $(PINS_VENV)/bin/python -m pip install -q $(PIP_TOOLS); }
	for name in requirements requirements-dev requirements-checkov; do \
	  $(PIP_COMPILE) -o $$name.txt $$name.in && \
	  { sed -n 's/^##/#/p' $$name.in; cat $$name.txt; } > $$name.txt.tmp && mv $$name.txt.tmp $$name.txt || exit 1; \
	done

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

web: $(WEB_BUILT) ## the web page, built into jitbroker/static/

$(WEB_BUILT): $(WEB_SOURCES) node_modules/.installed
	npm run --silent build

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
	rm -rf $(VENV) node_modules .lab .pytest_cache .mypy_cache .ruff_cache jitbroker/static
