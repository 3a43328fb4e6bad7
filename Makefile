# `make serve` and `make test` work on a fresh machine: each creates .venv when missing.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast lint bench clean system-deps browser-deps

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/cmw serve $(ARGS)

# `cmw serve --workers N` runs HAProxy and its tests a redis-server: Debian packages, installed when missing
# (as root, e.g. CI); without them those tests skip and say why.
system-deps:
	@if ! command -v haproxy >/dev/null || ! command -v redis-server >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy redis-server; \
	  else echo "note: haproxy/redis-server missing (apt-get install haproxy redis-server); their tests skip"; fi; \
	fi

# tests/browser drive Debian's chromium (never `playwright install`): installed when missing (as root with
# apt-get); elsewhere those tests skip and say why. Under CI (CI set) a browser that cannot be installed fails.
CHROMIUM := /usr/bin/chromium
browser-deps:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	  elif [ -n "$$CI" ]; then echo "error: CI needs $(CHROMIUM) and apt-get (as root) to install it"; exit 1; \
	  else echo "note: $(CHROMIUM) missing (apt-get install chromium); the browser tests skip"; fi; \
	fi

test: $(STAMP) system-deps browser-deps
	$(VENV)/bin/ruff check agent cmw_cli tests bench
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The fast tier: no server process, browser or system service (markers in pyproject.toml); run it after
# every change. `make test` runs everything.
FAST_TIER := not server and not services and not browser
test-fast: $(STAMP)
	$(VENV)/bin/ruff check agent cmw_cli tests bench
	$(VENV)/bin/python -m pytest -m "$(FAST_TIER)" -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python bench/cli_startup.py

clean:
	rm -rf $(VENV) build dist *.egg-info
