"""The gating model f(x; W_g) (Tables III, V, VII) and its MAC count C_g."""
import numpy as np
import pytest

from bmoe_tf.backend import keras, tf
from bmoe_tf.gating import (PAPER_GATES, PAPER_MAC_CAPS, build_gate, count_macs, mac_table,
                            paper_gate)

TASKS = ("detection", "super_resolution", "action")

# task: (input HxWxC, VALID conv output side, flatten size, hidden units)
PAPER_SHAPES = {
    "detection": ((224, 224, 3), 111, 28224, 1024),
    "super_resolution": ((64, 64, 3), 31, 6400, 512),
    "action": ((24, 24, 320), 11, 7744, 1024),
}

# The printed Mult-Adds: (conv, first FC, last FC) for N = 3.
PRINTED_MACS = {
    "detection": (2_747_136, 28_901_376, 3_072),
    "super_resolution": (224_256, 3_276_800, 1_536),
    "action": (3_363_840, 7_929_856, 3_072),
}


@pytest.fixture(scope="module")
def gates():
    return {task: paper_gate(task) for task in TASKS}


def _separable_macs(side_out, kernel, c_in, c_out):
    """Depthwise (k*k*C_in per position) + pointwise (C_in*C_out per position)."""
    return side_out * side_out * (kernel * kernel * c_in + c_in * c_out)


def _layer(model, suffix):
    return model.get_layer(f"{model.name}_{suffix}")


# --------------------------------------------------------------------------- #
# Architecture of the paper gates
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("task", TASKS)
def test_paper_gate_shapes(gates, task):
    model = gates[task]
    (h, w, c), side, flat, hidden = PAPER_SHAPES[task]
    assert model.input_shape == (None, h, w, c)
    assert model.output_shape == (None, 3)
    conv = _layer(model, "conv")
    assert isinstance(conv, keras.layers.SeparableConv2D)
    assert conv.output_shape == (None, side, side, 64)
    assert tuple(conv.depthwise_kernel.shape) == (3, 3, c, 1)
    assert tuple(conv.pointwise_kernel.shape) == (1, 1, c, 64)
    assert conv.strides == (2, 2) and conv.activation is keras.activations.relu
    assert _layer(model, "flatten").output_shape == (None, flat)
    fc1, logits = _layer(model, "fc1"), _layer(model, "logits")
    assert tuple(fc1.kernel.shape) == (flat, hidden)
    assert fc1.activation is keras.activations.relu
    assert tuple(logits.kernel.shape) == (hidden, 3)
    assert logits.activation is keras.activations.linear
    has_pool = task != "action"
    assert any(isinstance(layer, keras.layers.AveragePooling2D) for layer in model.layers) == has_pool


def test_paper_gate_pool_and_num_experts():
    model = paper_gate("super_resolution", num_experts=5)
    pool = _layer(model, "pool")
    assert pool.pool_size == (3, 3) and pool.strides == (3, 3) and pool.padding == "valid"
    assert pool.output_shape == (None, 10, 10, 64)
    assert tuple(_layer(model, "logits").kernel.shape) == (512, 5)
    assert model(tf.zeros((2, 64, 64, 3))).shape == (2, 5)


def test_build_gate_custom_layout():
    model = build_gate((32, 40, 5), 4, filters=8, kernel_size=(3, 5), strides=(1, 2),
                       padding="same", pool_size=(2, 4), hidden_units=(16, 12), name="g")
    assert [layer.name for layer in model.layers] == [
        "g_input", "g_conv", "g_pool", "g_flatten", "g_fc1", "g_fc2", "g_logits"]
    assert _layer(model, "conv").output_shape == (None, 32, 20, 8)
    assert _layer(model, "pool").output_shape == (None, 16, 5, 8)  # strides default to pool
    assert model.output_shape == (None, 4)
    no_hidden = build_gate((8, 8, 1), 2, filters=2, hidden_units=())
    assert tuple(_layer(no_hidden, "logits").kernel.shape) == (3 * 3 * 2, 2)


# --------------------------------------------------------------------------- #
# C_g of the paper gates
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("task", TASKS)
def test_paper_gate_macs_valid(gates, task):
    (_, _, c), side, flat, hidden = PAPER_SHAPES[task]
    expected = _separable_macs(side, 3, c, 64) + flat * hidden + hidden * 3
    assert count_macs(gates[task]) == expected
    assert count_macs(gates[task]) == {"detection": 31_602_747, "super_resolution": 3_488_795,
                                       "action": 10_759_488}[task]


@pytest.mark.parametrize("task", TASKS)
def test_paper_gate_mac_table_rows(gates, task):
    rows = mac_table(gates[task])
    (h, w, c), side, flat, hidden = PAPER_SHAPES[task]
    assert rows[0] == {"layer": "gate_conv", "type": "SeparableConv2D", "input_shape": (h, w, c),
                       "output_shape": (side, side, 64),
                       "macs": _separable_macs(side, 3, c, 64)}
    assert [row["type"] for row in rows if row["macs"] == 0] == (
        ["AveragePooling2D", "Flatten"] if task != "action" else ["Flatten"])
    assert rows[-2]["input_shape"] == (flat,) and rows[-1]["output_shape"] == (3,)
    assert sum(row["macs"] for row in rows) == count_macs(gates[task])


@pytest.mark.parametrize("task", TASKS)
def test_paper_printed_figures(gates, task):
    conv_printed, fc_printed, logits_printed = PRINTED_MACS[task]
    # The printed convolution cost is that of a SAME-padded output.
    same = paper_gate(task, padding="same", hidden_units=())
    conv_row = mac_table(same)[0]
    assert conv_row["type"] == "SeparableConv2D"
    assert conv_row["macs"] == conv_printed
    # The printed FC costs match the VALID build.
    rows = {row["layer"]: row["macs"] for row in mac_table(gates[task])}
    assert rows["gate_fc1"] == fc_printed
    assert rows["gate_logits"] == logits_printed


@pytest.mark.parametrize("task", TASKS)
def test_paper_gates_below_caps(gates, task):
    assert count_macs(gates[task]) < PAPER_MAC_CAPS[task]
    assert PAPER_MAC_CAPS == {"detection": 1e8, "super_resolution": 1e7, "action": 1e8}


# --------------------------------------------------------------------------- #
# Argument checking
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kwargs, message", [
    (dict(num_experts=1), "num_experts"),
    (dict(num_experts=2.0), "num_experts"),
    (dict(num_experts=True), "num_experts"),
    (dict(input_shape=(64, 64)), "input_shape"),
    (dict(input_shape=(None, 64, 3)), "input_shape"),
    (dict(input_shape=(64, 0, 3)), "input_shape"),
    (dict(padding="full"), "padding"),
    (dict(filters=0), "filters"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(strides=0), "strides"),
    (dict(kernel_size=9, input_shape=(8, 8, 3)), "larger than the input"),
    (dict(pool_size=32), "pool_size .* larger than the convolution output 31x31"),
    (dict(pool_strides=2), "without pool_size"),
    (dict(pool_size=2, pool_strides=(1, 0)), "pool_strides"),
    (dict(hidden_units=(512, 0)), r"hidden_units\[1\]"),
    (dict(hidden_units=None), "hidden_units"),
    (dict(name=""), "name"),
])
def test_build_gate_bad_arguments(kwargs, message):
    arguments = dict(input_shape=(64, 64, 3), num_experts=3)
    arguments.update(kwargs)
    input_shape, num_experts = arguments.pop("input_shape"), arguments.pop("num_experts")
    with pytest.raises(ValueError, match=message):
        build_gate(input_shape, num_experts, **arguments)


def test_paper_gate_bad_arguments():
    with pytest.raises(ValueError, match="unknown task 'segmentation'.*action.*detection"
                                          ".*super_resolution"):
        paper_gate("segmentation")
    with pytest.raises(ValueError, match="num_experts"):
        paper_gate("action", num_experts=1)
    with pytest.raises(TypeError, match="dropout"):
        paper_gate("action", dropout=0.5)
    assert set(PAPER_GATES) == set(TASKS)
    with pytest.raises(TypeError):
        count_macs("not a model")


# --------------------------------------------------------------------------- #
# Compilation
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("task", ["super_resolution", "action"])
def test_gate_under_xla(gates, task):
    model = gates[task]
    shape = PAPER_SHAPES[task][0]
    x = tf.random.stateless_normal((4,) + shape, seed=(1, 2))
    logits = tf.function(lambda t: model(t, training=False), jit_compile=True)(x)
    assert logits.shape == (4, 3) and logits.dtype == tf.float32
    np.testing.assert_allclose(logits.numpy(), model(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(logits.numpy()))


def test_compact_gate_is_small_and_xla_safe():
    from bmoe_tf.gating import compact_gate

    gate = compact_gate((64, 64, 3), 3)
    assert gate.output_shape == (None, 3)
    assert gate.count_params() < 10_000
    # 31x31x(27 + 3*16) + 15x15x(16*9 + 16*32) + 7x7x(32*9 + 32*32) + 32*32 + 32*3
    want = 31 * 31 * (27 + 48) + 15 * 15 * (144 + 512) + 7 * 7 * (288 + 1024) + 1024 + 96
    assert count_macs(gate) == want
    out = tf.function(gate, jit_compile=True)(tf.zeros((2, 64, 64, 3)))
    assert out.shape == (2, 3)
    with pytest.raises(ValueError, match="do not fit"):
        compact_gate((8, 8, 3), 3, filters=(4, 4, 4))
