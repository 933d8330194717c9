# `make test` and `make demo` set up .venv themselves on a fresh machine (Debian, Python 3.11, no GPU).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[cpu,dev]'
	touch $@

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

demo: setup
	$(PY) -m prost_cli.demo --workdir demo

clean:
	rm -rf $(VENV) demo
