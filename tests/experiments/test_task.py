"""experiments.task: the TrainingSet's augmentation helper."""
import numpy as np
import pytest

from bmoe_tf.cache import score_cache
from experiments.task import TrainingSet


def test_with_copies_repeats_every_per_example_row_in_order():
    x = np.arange(3 * 2 * 2 * 1, dtype=np.float32).reshape(3, 2, 2, 1)
    scores = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    costs = np.array([[10.0, 20.0], [11.0, 21.0], [12.0, 22.0]])
    train = TrainingSet(x, score_cache(scores), costs=costs)
    both = train.with_copies(x[:, :, ::-1])
    assert both.gate_inputs.shape == (6, 2, 2, 1) and both.gate_inputs.dtype == np.float32
    np.testing.assert_array_equal(both.gate_inputs[3:], x[:, :, ::-1])
    np.testing.assert_array_equal(both.cache["scores"], np.concatenate([scores, scores]))
    np.testing.assert_array_equal(both.costs, np.concatenate([costs, costs]))
    assert both.cache["kind"] == "scores" and both.targets is None
    # the original is unchanged (a frozen value)
    assert train.gate_inputs.shape == (3, 2, 2, 1) and len(train.cache["scores"]) == 3
    with pytest.raises(ValueError, match="inputs of shape \\(2, 2, 2, 1\\)"):
        train.with_copies(x[:2])
