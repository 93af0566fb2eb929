"""Eq. 4 utility, Eq. 5 bias loss and the four training losses (bmoe_tf.losses)."""
import math

import numpy as np
import pytest

from bmoe_tf import mixture
from bmoe_tf.backend import tf
from bmoe_tf.losses import (TRAINING_LOSS_INPUTS, TRAINING_LOSSES, bias_loss, expected_loss,
                            expert_utility, gated_loss, relative_loss, selected_loss)


def test_expert_utility_is_eq4():
    g = np.array([[0.7, 0, 0], [0, 0.6, 0], [0.9, 0, 0], [0, 0, 0.5]], np.float32)
    np.testing.assert_allclose(expert_utility(g).numpy(), [0.4, 0.15, 0.125])
    # with one replica (no strategy here) the global batch is the batch; the two-replica
    # case, its gradient included, is tested in tests/bmoe_tf/test_mixture_distributed.py
    np.testing.assert_allclose(expert_utility(g, global_batch=True).numpy(),
                               [0.4, 0.15, 0.125])


def test_bias_loss_is_eq5():
    u = np.array([0.5, 0.3, 0.2], np.float32)
    b = [0.2, 0.3, 0.5]
    want = -2.0 * math.log(1 - math.sqrt(0.09 + 0.09) / math.sqrt(2))
    assert float(bias_loss(u, b, 2.0)) == pytest.approx(want, rel=1e-6)
    assert float(bias_loss(np.array(b, np.float32), b, 2.0)) == 0.0
    # orthogonal one-hots: 1 - sqrt(2)/sqrt(2) = 0, clipped to a finite loss
    assert np.isfinite(float(bias_loss(np.array([1.0, 0, 0], np.float32), [0, 1, 0], 1.0)))
    with tf.GradientTape() as tape:
        uu = tf.Variable(b, dtype=tf.float32)
        loss = bias_loss(uu, b, 1.0)
    assert np.all(np.isfinite(tape.gradient(loss, uu).numpy()))  # no NaN at u == b
    with pytest.raises(ValueError, match=">= 0"):
        bias_loss(u, b, -1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        bias_loss(u, [0.5, 0.5, 0.5], 1.0)


def test_training_loss_table():
    assert tuple(TRAINING_LOSSES) == mixture.TRAINING_LOSSES == (
        "selected", "gated", "expected", "relative")
    assert TRAINING_LOSSES["relative"] is relative_loss
    assert TRAINING_LOSS_INPUTS == {"selected": "mixture_loss", "gated": "selected_expert_loss",
                                    "expected": "expert_losses", "relative": "expert_losses"}


def test_selected_loss_is_the_mixture_loss():
    np.testing.assert_array_equal(selected_loss(np.array([0.5, 2.0], np.float32)).numpy(),
                                  [0.5, 2.0])


def test_gated_loss_values_and_gradient():
    gates = tf.Variable([[0.7, 0.0, 0.0], [0.0, 0.2, 0.0]])
    own = tf.Variable([2.0, 3.0])
    with tf.GradientTape() as tape:
        loss = gated_loss(gates, own)
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(loss.numpy(), [1.4, 0.6], rtol=1e-6)
    g_gates, g_own = tape.gradient(total, [gates, own])
    np.testing.assert_allclose(g_gates.numpy(), [[2, 2, 2], [3, 3, 3]])
    assert g_own is None  # the expert's loss is a constant for the gate


def test_expected_loss_is_the_softmax_mean():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]], np.float32)
    losses = np.array([[1.0, 3.0], [4.0, 8.0]], np.float32)
    np.testing.assert_allclose(expected_loss(logits, losses).numpy(),
                               [2.0, 0.75 * 4 + 0.25 * 8], rtol=1e-6)


def test_relative_loss_hand_example():
    # centred losses [[-1, 1], [0, 0]]: median |gap| 1, targets [[1, -1], [0, 0]]
    losses = np.array([[1.0, 3.0], [2.0, 2.0]], np.float32)
    np.testing.assert_allclose(relative_loss(np.zeros((2, 2), np.float32), losses).numpy(),
                               [1.0, 0.0], rtol=1e-6)
    # logits equal to the targets (up to a per-row shift) give zero loss
    np.testing.assert_allclose(
        relative_loss(np.array([[6.0, 4.0], [1.0, 1.0]], np.float32), losses).numpy(),
        [0.0, 0.0], atol=1e-7)
    # the scale never drops below a tenth of the mean gap
    spread = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 4.0]], np.float32)
    got = relative_loss(np.zeros((4, 2), np.float32), spread).numpy()
    scale = 0.1 * 0.5 + 1e-12  # gaps [0]*6 + [2, 2]: median 0, mean 0.5
    np.testing.assert_allclose(got, [0, 0, 0, (2.0 / scale) ** 2], rtol=1e-5)
