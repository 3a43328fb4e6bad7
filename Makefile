# `make serve` and `make test` work on a fresh machine: each creates .venv when missing.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/cmw serve $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check agent cmw_cli tests bench
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python bench/cli_startup.py

clean:
	rm -rf $(VENV) build dist *.egg-info
