"""Tests for bmoe_tf.evaluation: Eq. 11, random selection, the oracle and the tables."""
import itertools
import math

import numpy as np
import pytest

from bmoe_tf.evaluation import (assigned_subset_performance, oracle_assignment,
                                oracle_gain_share, random_selection, rho, routed_score)
from bmoe_tf.routing import expert_capacities

# --------------------------------------------------------------------------- rho (Eq. 11)


def test_rho_linear_curve():
    # p = 2 + 3 t with t = (d - 10) / 20: mean height over t in [0, 1] is 3.5
    assert rho([10.0, 20.0, 30.0], [2.0, 3.5, 5.0]) == pytest.approx(3.5, rel=1e-12)


def test_rho_constant():
    assert rho([13.9, 21.8, 49.2], [7.25, 7.25, 7.25]) == pytest.approx(7.25, rel=1e-12)


def test_rho_unsorted_input():
    costs = np.array([13.9, 49.2, 16.4, 24.6])
    perfs = np.array([27.6, 33.3, 28.4, 30.4])
    order = np.argsort(costs)
    assert rho(costs, perfs) == pytest.approx(rho(costs[order], perfs[order]), rel=1e-15)


def test_rho_is_normalised_by_the_given_cost_range():
    # Same shape on a cost axis 100x wider and shifted: same rho.
    a = rho([1.0, 2.0, 5.0], [0.0, 4.0, 1.0])
    b = rho([100.0, 200.0, 500.0], [0.0, 4.0, 1.0])
    c = rho([1001.0, 1002.0, 1005.0], [0.0, 4.0, 1.0])
    assert a == pytest.approx(b, rel=1e-12) and a == pytest.approx(c, rel=1e-12)
    # hand value: widths 1/4 and 3/4 of the range, averages 2 and 2.5 -> 0.5 + 1.875
    assert a == pytest.approx(2.375, rel=1e-12)


def test_rho_two_points():
    assert rho([3.0, 1.0], [10.0, 0.0]) == pytest.approx(5.0)


@pytest.mark.parametrize("costs, perfs, message", [
    ([1.0], [2.0], "at least 2 points"),
    ([1.0, 2.0], [2.0], "equal length"),
    ([[1.0, 2.0]], [[1.0, 2.0]], "1-D"),
    ([1.0, np.nan], [1.0, 2.0], "finite"),
    ([1.0, 2.0], [1.0, np.inf], "finite"),
    ([1.0, 2.0, 2.0], [1.0, 2.0, 3.0], r"distinct.*duplicates \[2\.0\]"),
    ([4.0, 4.0], [1.0, 2.0], "distinct"),
])
def test_rho_errors(costs, perfs, message):
    with pytest.raises(ValueError, match=message):
        rho(costs, perfs)


# --------------------------------------------------------------------------- random_selection

def test_random_selection_whole_set_counts():
    bias = [0.5, 0.3, 0.2]
    a = random_selection(101, bias, seed=0)
    assert a.dtype == np.int64 and a.shape == (101,)
    np.testing.assert_array_equal(np.bincount(a, minlength=3), expert_capacities(101, bias))


def test_random_selection_per_batch_counts():
    bias = [0.5, 0.25, 0.25]
    a = random_selection(100, bias, seed=1, batch_size=32)
    for start, size in [(0, 32), (32, 32), (64, 32), (96, 4)]:
        chunk = a[start:start + size]
        np.testing.assert_array_equal(np.bincount(chunk, minlength=3),
                                      expert_capacities(size, bias))
    np.testing.assert_array_equal(expert_capacities(32, bias), [16, 8, 8])
    np.testing.assert_array_equal(expert_capacities(4, bias), [2, 1, 1])


def test_random_selection_seeded():
    bias = [0.2, 0.2, 0.6]
    a = random_selection(200, bias, seed=42, batch_size=16)
    np.testing.assert_array_equal(a, random_selection(200, bias, seed=42, batch_size=16))
    assert not np.array_equal(a, random_selection(200, bias, seed=43, batch_size=16))


def test_random_selection_is_shuffled():
    # Not just sorted labels: each expert lands all over the set.
    a = random_selection(300, [1 / 3, 1 / 3, 1 / 3], seed=3)
    assert not np.all(np.diff(a) >= 0)
    for n in range(3):
        where = np.flatnonzero(a == n)
        assert where.min() < 50 and where.max() > 250


def test_random_selection_zero_share_and_empty():
    a = random_selection(50, [0.0, 1.0], seed=0, batch_size=7)
    np.testing.assert_array_equal(a, np.ones(50))
    assert random_selection(0, [0.5, 0.5], seed=0).shape == (0,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_examples=-1, bias=[1.0]), "num_examples must be an integer >= 0"),
    (dict(num_examples=2.5, bias=[1.0]), "num_examples must be an integer"),
    (dict(num_examples=10, bias=[1.0], batch_size=0), "batch_size must be an integer >= 1"),
    (dict(num_examples=10, bias=[0.6, 0.6]), "must sum to 1"),
])
def test_random_selection_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        random_selection(**kwargs)


# --------------------------------------------------------------------------- oracle

_ALL = {}


def _brute_force_best(scores, counts):
    """Best objective over every assignment with exactly ``counts`` per expert."""
    m, n = scores.shape
    if (m, n) not in _ALL:
        _ALL[(m, n)] = np.array(list(itertools.product(range(n), repeat=m)), dtype=np.int64)
    every = _ALL[(m, n)]
    per_expert = (every[:, :, None] == np.arange(n)).sum(axis=1)
    valid = every[np.all(per_expert == counts, axis=1)]
    return scores[np.arange(m), valid].sum(axis=1).max()


@pytest.mark.parametrize("seed", range(30))
def test_oracle_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(3, 8))
    bias = rng.dirichlet(np.ones(3))
    scores = rng.normal(size=(m, 3))
    if seed % 3 == 0:
        scores = np.round(scores)  # ties
    a = oracle_assignment(scores, bias)
    caps = expert_capacities(m, bias)
    assert a.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(a, minlength=3), caps)
    best = _brute_force_best(scores, caps)
    assert scores[np.arange(m), a].sum() == pytest.approx(best, abs=1e-9)


def test_oracle_beats_random_and_is_exact_on_a_hand_example():
    scores = np.array([[9.0, 1.0], [8.0, 7.0], [1.0, 2.0], [5.0, 0.0]])
    a = oracle_assignment(scores, [0.5, 0.5])
    # example 1 gains least from expert 0 (8 vs 7): it and example 2 go to expert 1
    np.testing.assert_array_equal(a, [0, 1, 1, 0])
    assert routed_score(scores, a) == pytest.approx((9 + 7 + 2 + 5) / 4)
    for seed in range(5):
        r = random_selection(4, [0.5, 0.5], seed=seed)
        assert routed_score(scores, r) <= routed_score(scores, a)


def test_oracle_errors():
    with pytest.raises(ValueError, match="has 2 entries but there are 3 experts"):
        oracle_assignment(np.zeros((4, 3)), [0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        oracle_assignment(np.array([[np.nan, 0.0]]), [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[M, N\]"):
        oracle_assignment(np.zeros(4), [1.0])


# --------------------------------------------------------------------------- tables

def test_assigned_subset_performance_hand_example():
    scores = np.array([
        [10.0, 20.0],
        [30.0, 40.0],
        [50.0, 60.0],
        [70.0, 80.0],
    ])
    rows = assigned_subset_performance(scores, [0, 0, 1, 0], expert_names=["E1", "E2"])
    assert [r["expert"] for r in rows] == ["E1", "E2"]
    e1, e2 = rows
    assert e1["count"] == 3 and isinstance(e1["count"], int)
    assert e1["share"] == pytest.approx(0.75)
    assert e1["assigned"] == pytest.approx((10 + 30 + 70) / 3)
    assert e1["all"] == pytest.approx(40.0)
    assert e1["delta"] == pytest.approx((10 + 30 + 70) / 3 - 40.0)
    assert e2["count"] == 1 and e2["share"] == pytest.approx(0.25)
    assert e2["assigned"] == pytest.approx(60.0)
    assert e2["all"] == pytest.approx(50.0)
    assert e2["delta"] == pytest.approx(10.0)


def test_assigned_subset_performance_unused_expert():
    rows = assigned_subset_performance(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), [2, 0])
    assert [r["expert"] for r in rows] == [0, 1, 2]
    assert rows[1]["count"] == 0 and rows[1]["share"] == 0.0
    assert math.isnan(rows[1]["assigned"]) and math.isnan(rows[1]["delta"])
    assert rows[1]["all"] == pytest.approx(3.5)
    assert rows[2]["assigned"] == pytest.approx(3.0)


@pytest.mark.parametrize("assignment, message", [
    ([0, 1], "one expert per example"),
    ([[0, 1, 0]], "one expert per example"),
    ([0, 2, 1], r"in \[0, 2\)"),
    ([0, -1, 1], r"in \[0, 2\)"),
    ([0.0, 1.0, 1.0], "integer"),
])
def test_assignment_errors(assignment, message):
    scores = np.zeros((3, 2))
    with pytest.raises(ValueError, match=message):
        assigned_subset_performance(scores, assignment)
    with pytest.raises(ValueError, match=message):
        routed_score(scores, assignment)


def test_expert_names_length():
    with pytest.raises(ValueError, match="expert_names has 1 entries but there are 2"):
        assigned_subset_performance(np.zeros((2, 2)), [0, 1], expert_names=["a"])


def test_routed_score():
    scores = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert routed_score(scores, np.array([1, 0, 1], dtype=np.int32)) == pytest.approx(11 / 3)


# --------------------------------------------------------------------------- oracle_gain_share

def test_oracle_gain_share_values():
    assert oracle_gain_share(29.8, 29.8, 31.8) == pytest.approx(0.0)
    assert oracle_gain_share(31.8, 29.8, 31.8) == pytest.approx(1.0)
    assert oracle_gain_share(30.3, 29.8, 31.8) == pytest.approx(0.25)
    assert oracle_gain_share(29.3, 29.8, 31.8) == pytest.approx(-0.25)


@pytest.mark.parametrize("oracle", [29.8, 29.0])
def test_oracle_gain_share_no_gain(oracle):
    with pytest.raises(ValueError, match="no gain to share"):
        oracle_gain_share(30.0, 29.8, oracle)


def test_oracle_gain_share_non_finite():
    with pytest.raises(ValueError, match="finite"):
        oracle_gain_share(np.nan, 0.0, 1.0)
