"""Tiny gates and inputs shared by the ``gating_tflite`` test files.

A pytest plugin (``pytest_plugins = ["tests.gating_tflite.tflite_fixtures"]`` in each test file): its
fixtures are session-scoped, so the trained gate and its export are made once per
run however many of the test files run.
"""
import numpy as np
import pytest

from bmoe_tf.backend import keras
from bmoe_tf.gating import compact_gate
from gating_tflite.calibration import ExportData
from gating_tflite.export import export_gate
from gating_tflite.targets import resolve_target

SHAPE = (16, 16, 3)
BIAS = np.array([0.5, 0.3, 0.2])
#: b for :func:`near_tie_gate`: experts 0 and 1 share 80% of the inputs.
NEAR_TIE_BIAS = np.array([0.4, 0.4, 0.2])


def inputs(m, seed):
    """Frames whose brightness sets the best expert: smooth noise around a level."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.1, 0.9, size=(m, 1, 1, 1))
    return np.clip(level + 0.05 * rng.standard_normal((m,) + SHAPE), 0, 1).astype(np.float32)


def near_tie_gate(gap=0.001):
    """An untrained gate whose logits for experts 0 and 1 differ by at most ``gap``.

    ``z0 = 4 r``, ``z1 = z0 + 2 gap (r - 0.5)``, ``z2 = 2.4`` with ``r`` the mean red
    level: the float gate splits experts 0 and 1 at any threshold, but int8 logits
    (steps of ~0.013) tie them, so offsets on the int8 logits cannot hold b (int16
    logits, steps of ~1e-4, still tie them at gap 0.001 but not at 0.02).
    """
    x = keras.Input(SHAPE)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(3)
    model = keras.Model(x, head(pooled))
    kernel = np.zeros((3, 3), np.float32)
    kernel[0] = [4.0, 4.0 + 2 * gap, 0.0]
    head.set_weights([kernel, np.array([0.0, -gap, 2.4], np.float32)])
    return model


def near_tie_data():
    return ExportData(representative=inputs(100, 12), calibration=inputs(600, 13),
                      heldout=inputs(600, 14), test=inputs(100, 15),
                      notes={"source": "near-tie fixture"})


@pytest.fixture(scope="session")
def gate():
    """A tiny trained gate: brightness thirds -> experts 0, 1, 2 (well-separated logits)."""
    keras.utils.set_random_seed(0)
    model = compact_gate(SHAPE, 3, filters=(8,), hidden_units=8)
    x = inputs(1500, 1)
    y = np.digitize(x.mean(axis=(1, 2, 3)), [0.37, 0.63])
    model.compile(keras.optimizers.Adam(3e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    assert np.mean(np.argmax(model.predict(x, verbose=0), 1) == y) > 0.9  # it learned
    return model


@pytest.fixture(scope="session")
def data():
    return ExportData(representative=inputs(200, 2), calibration=inputs(3000, 3),
                      heldout=inputs(3000, 4), test=inputs(300, 5),
                      test_metric=lambda a: float(np.mean(np.asarray(a) == 2)),
                      metric_name="share of expert 2",
                      data_costs=np.array([1.0, 2.0, 4.0]), expert_names=("a", "b", "c"))


@pytest.fixture(scope="session")
def exported(gate, data, tmp_path_factory):
    """``(path of the .tflite, ExportReport, problems)``: index output, stm32h743, C files."""
    out = str(tmp_path_factory.mktemp("export") / "gate.tflite")
    report, problems = export_gate(gate, data, BIAS, out=out, output="index",
                                   target=resolve_target("stm32h743"), emit_c=True)
    return out, report, problems


@pytest.fixture(scope="session")
def saved_near_tie_gate(tmp_path_factory):
    """A gate directory ``shared/`` holding the near-tie gate's SavedModel ``gate/`` and
    its ``gate.json`` (b = :data:`NEAR_TIE_BIAS`), as the experiments write them."""
    import json

    root = tmp_path_factory.mktemp("saved") / "shared"
    near_tie_gate().save(str(root / "gate"), include_optimizer=False)
    with open(root / "gate.json", "w") as f:
        json.dump({"bias": NEAR_TIE_BIAS.tolist()}, f)
    return str(root)


@pytest.fixture(scope="session")
def tflite_bytes(exported):
    with open(exported[0], "rb") as f:
        return f.read()


def export_cli(capsys, *argv):
    """``(exit code, stdout, stderr lines)`` of one in-process run of the export CLI
    (``python -m gating_tflite.export``: its flags parsed afresh, restored afterwards)."""
    from absl.testing import flagsaver

    from gating_tflite import cli

    with flagsaver.flagsaver():
        try:
            cli.main(cli.parse_flags(["bmoe-export-gate", *argv]))
            code = 0
        except SystemExit as stop:
            code = stop.code
    out, err = capsys.readouterr()
    return code, out, err.splitlines()
