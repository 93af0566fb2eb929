PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench firmware clean

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

# A compact gate for a Cortex-M7 (experts retrained in their own workdir), exported
# to int8 TFLite Micro with the firmware C files: workdir/sr_compact/firmware/.
firmware: $(STAMP)
	$(PY) -m experiments.super_resolution --preset=quick --gate=compact --epochs=200 \
	  --learning_rate=0.01 --methods=enforce,random,benchmark,oracle --workdir=workdir/sr_compact
	$(PY) -m gating_tflite.export --gate=workdir/sr_compact/gates/enforce/shared \
	  --calibration=workdir/sr_compact --out=workdir/sr_compact/firmware/gate.tflite \
	  --target=stm32h743 --emit_c

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
