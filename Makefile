# `make test` and `make demo` set up .venv themselves on a fresh machine (Debian, Python 3.11, no GPU).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo reliability bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[cpu,dev]'
	touch $@

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

demo: setup
	$(PY) -m prost_cli.demo --workdir demo

# Minutes per case (not part of `make test`, which runs it with --smoke): writes reliability/report.md and .json.
reliability: setup
	$(PY) bench/reliability.py --out reliability

# Speed as ratios to references measured in the same run (not part of `make test`, which runs it with --smoke):
# writes bench/report.md, bench/report.json and PNG plots, in under 30 minutes on 2 cores. Some machines set
# OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) for old OpenBLAS builds; it pins numpy's OpenBLAS to slower kernels than
# this CPU runs, so the benchmark unsets both and the report names the kernel numpy then runs.
bench: setup
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/report.py --out bench

clean:
	rm -rf $(VENV) demo
