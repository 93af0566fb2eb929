PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collected no test: that is a failure for us too.
test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m benchmarks.core

demo: $(STAMP)
	$(PY) -m experiments.super_resolution --preset=quick --workdir=workdir/super_resolution

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
