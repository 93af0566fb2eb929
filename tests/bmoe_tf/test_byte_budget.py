"""bmoe_tf.byte_budget: the byte-budget oracle against brute force (within its stated
bound, usually exact), and the byte-aware assignment meets every batch's budget."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmoe_tf import byte_budget


def _brute(values, costs, budget):
    m, n = values.shape
    best = -np.inf
    for a in itertools.product(range(n), repeat=m):
        a = np.array(a)
        if costs[np.arange(m), a].sum() <= budget + 1e-9:
            best = max(best, values[np.arange(m), a].sum())
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_oracle_is_feasible_and_bounded_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    m, n = rng.integers(1, 7), rng.integers(2, 4)
    values = rng.normal(size=(m, n))
    costs = np.sort(rng.integers(1, 50, size=(m, n)), axis=1).astype(float)  # dearer = more bytes
    low, high = costs.min(axis=1).sum(), costs.max(axis=1).sum()
    budget = float(rng.uniform(low, high))
    out = byte_budget.budget_oracle(values, costs, budget)
    opt = _brute(values, costs, budget)
    spent = costs[np.arange(m), out.assignment].sum()
    assert spent <= budget + 1e-9 and out.bytes == pytest.approx(spent)
    assert out.value == pytest.approx(values[np.arange(m), out.assignment].sum())
    assert out.value <= opt + 1e-9 <= out.bound + 2e-9
    assert out.gap == pytest.approx(out.bound - out.value)


def test_the_oracle_is_exact_on_most_tiny_cases_and_close_on_the_rest():
    exact, worst = 0, 0.0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        values = rng.normal(size=(6, 3))
        costs = np.sort(rng.integers(1, 30, size=(6, 3)), axis=1).astype(float)
        budget = float(rng.uniform(costs[:, 0].sum(), costs[:, -1].sum()))
        out = byte_budget.budget_oracle(values, costs, budget)
        opt = _brute(values, costs, budget)
        exact += np.isclose(out.value, opt)
        worst = max(worst, opt - out.value)
    assert exact >= 150  # measured: 163 of 200 exact, the worst 2.02 below
    assert worst < 2.5  # at most about one input's value gap (values ~ N(0, 1))


def test_an_unconstrained_budget_takes_every_best_expert_and_a_tight_one_the_cheapest():
    values = np.array([[0.0, 1.0, 3.0], [2.0, 0.0, 1.0]])
    costs = np.array([[1.0, 2.0, 4.0], [1.0, 3.0, 9.0]])
    out = byte_budget.budget_oracle(values, costs, 100.0)
    assert out.assignment.tolist() == [2, 0] and out.gap == 0 and out.price == 0
    tight = byte_budget.budget_oracle(values, costs, 2.0)
    assert tight.assignment.tolist() == [0, 0] and tight.bytes == 2.0
    with pytest.raises(ValueError, match="below the 2 B of the cheapest choice"):
        byte_budget.budget_oracle(values, costs, 1.5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 40), frac=st.floats(0.0, 1.0))
def test_byte_aware_assignment_meets_every_batch_budget(seed, batch, frac):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 120))
    logits = rng.normal(scale=3.0, size=(m, 3))
    costs = np.sort(rng.uniform(100, 5000, size=(m, 3)), axis=1)
    target = float(np.quantile(costs[:, 0], 0.99) + frac * (costs[:, -1].mean() * 1.2))
    out = byte_budget.byte_aware_assignment(logits, costs, target, batch)
    for k, start in enumerate(range(0, m, batch)):
        part = slice(start, start + batch)
        spent = costs[part][np.arange(len(costs[part])), out.assignment[part]].sum()
        cheapest = costs[part, 0].sum()
        if cheapest <= target * len(costs[part]):
            assert spent <= target * len(costs[part]) * (1 + 1e-9) and not out.over[k]
        else:  # even the cheapest choices are over: the batch takes them and is flagged
            assert out.over[k] and spent == pytest.approx(cheapest)
        # and it spends its budget: within one input's switch of it, or every input at its
        # dearest expert when even that fits
        budget, dearest = target * len(costs[part]), costs[part, -1].sum()
        if dearest <= budget:
            assert spent == pytest.approx(dearest)
        elif cheapest <= budget:
            a = out.assignment[part]
            extra = costs[part] - costs[part][np.arange(len(a)), a][:, None]
            assert (extra[extra > 1e-12] > budget - spent - 1e-6).all()  # no move still fits


def test_byte_aware_assignment_prefers_cheap_inputs_for_the_dear_expert():
    """Same logits, one input's dear payload is small: at a tight budget the dear expert
    goes to the input whose bytes it costs least (what frequencies alone cannot see)."""
    logits = np.array([[0.0, 1.0]] * 4)
    costs = np.array([[100.0, 1000.0], [100.0, 300.0], [100.0, 1000.0], [100.0, 1000.0]])
    out = byte_budget.byte_aware_assignment(logits, costs, target=200.0, batch_size=4)
    assert out.assignment.tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batch_size=2, target=-1.0), "target must be a finite number of bytes >= 0"),
    (dict(batch_size=2, costs=-np.ones((2, 2))), r"costs must be >= 0"),
    (dict(batch_size=2, costs=np.ones((2, 3))), r"must have the same shape \[M, N\]"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = dict(logits=np.zeros((2, 2)), costs=np.ones((2, 2)), target=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        byte_budget.byte_aware_assignment(**args)


def test_the_byte_aware_mask_is_the_assignment_in_graph_mode():
    """byte_aware_mask (training) gives byte_aware_assignment's choices of one batch, also
    inside tf.function; an empty batch gives an empty mask."""
    from bmoe_tf.backend import tf
    from bmoe_tf.byte_budget import byte_aware_mask

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(24, 3)).astype(np.float32)
    costs = rng.integers(10, 400, size=(24, 3)).astype(np.float32)
    expect = byte_budget.byte_aware_assignment(logits, costs, 150.0, 24).assignment
    graph = tf.function(lambda v, c: byte_aware_mask(v, c, 150.0))
    for mask in (byte_aware_mask(logits, costs, 150.0), graph(logits, costs)):
        assert mask.shape == (24, 3)
        np.testing.assert_array_equal(np.argmax(mask.numpy(), axis=1), expect)
        np.testing.assert_array_equal(mask.numpy().sum(axis=1), 1.0)
    assert byte_aware_mask(np.zeros((0, 3), np.float32), np.zeros((0, 3)), 5.0).shape == (0, 3)
    with pytest.raises(ValueError, match="target"):
        byte_aware_mask(logits, costs, -1.0)
