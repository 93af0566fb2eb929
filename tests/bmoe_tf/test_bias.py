"""Tests for bmoe_tf.bias: validate_bias, select_bias (Eqs. 6-10) and upper_hull."""
import numpy as np
import pytest

from bmoe_tf.bias import select_bias, upper_hull, validate_bias

# Super-resolution setting of Table IV: costs of the x4, x3, x2 ESPCN experts (kB).
SR_COSTS = np.array([13.9, 21.8, 49.2])
# Expert PSNRs (dB) read back from Table IV's "Benchmark Experts" row: 33.3 at d_max,
# 30.4 at d_max/2 and 28.4 at d_max/3 are reproduced by p = [27.6, 30.1, 33.3].
SR_PSNR = np.array([27.6, 30.1, 33.3])


# --------------------------------------------------------------------------- validate_bias

def test_validate_bias_accepts_and_returns_float64():
    b = validate_bias([0.5, 0.25, 0.25], 3)
    assert b.dtype == np.float64
    np.testing.assert_array_equal(b, [0.5, 0.25, 0.25])


def test_validate_bias_negative_entry():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        validate_bias([1.2, -0.2, 0.0])


def test_validate_bias_wrong_length():
    with pytest.raises(ValueError, match="has 2 entries but there are 3 experts"):
        validate_bias([0.5, 0.5], 3)


def test_validate_bias_sum_off_by_1e5():
    with pytest.raises(ValueError, match="must sum to 1"):
        validate_bias([0.5, 0.25, 0.25 + 1e-5])


def test_validate_bias_sum_within_tolerance_passes():
    validate_bias([0.5, 0.25, 0.25 + 1e-7])


def test_validate_bias_nan():
    with pytest.raises(ValueError, match="non-finite"):
        validate_bias([np.nan, 0.5, 0.5])


def test_validate_bias_not_1d():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        validate_bias([[0.5, 0.5]])


# --------------------------------------------------------------------------- brute force

def _line_grid(constraint, target, steps=4000):
    """Grid over ``{b in simplex : b.constraint == target}`` (N = 3).

    The feasible set is a segment with direction ``v = (c2-c3, c3-c1, c1-c2)``.
    The coordinate k with the largest ``|v_k|`` is put on a grid of step
    ``1/steps``; for each value the two equalities fix the other two entries
    exactly, so every returned point is exactly feasible.

    Returns:
      ``(points[G, 3], v / v_k)``: the grid points and the segment direction per
      unit change of coordinate k (for bounding the grid's discretisation gap).
    """
    c = np.asarray(constraint, dtype=np.float64)
    v = np.array([c[1] - c[2], c[2] - c[0], c[0] - c[1]])
    k = int(np.argmax(np.abs(v)))
    i, j = [x for x in range(3) if x != k]
    bk = np.linspace(0.0, 1.0, steps + 1)
    rest = 1.0 - bk
    # b_i + b_j = rest, b_i c_i + b_j c_j = target - bk c_k
    bi = (target - bk * c[k] - rest * c[j]) / (c[i] - c[j])
    b = np.zeros((steps + 1, 3))
    b[:, k], b[:, i], b[:, j] = bk, bi, rest - bi
    ok = np.all(b >= -1e-12, axis=1)
    return b[ok], v / v[k]


def _random_experts(rng):
    d = np.sort(rng.uniform(1.0, 50.0, size=3))
    p = rng.uniform(0.0, 40.0, size=3)   # arbitrary order: concave or not, monotone or not
    return d, p


# --------------------------------------------------------------------------- select_bias

def test_non_concave_middle_expert_gets_zero():
    # (2, 21) lies below the chord from (1, 20) to (3, 30) (25 at d = 2).
    b = select_bias([1.0, 2.0, 3.0], [20.0, 21.0, 30.0], target_cost=2.0)
    np.testing.assert_allclose(b, [0.5, 0.0, 0.5], atol=1e-12)
    assert b @ [20.0, 21.0, 30.0] == pytest.approx(25.0, rel=1e-12)


def test_concave_middle_expert_is_used():
    # (2, 28) lies above the chord, so d_t = 2 is met by expert 2 alone.
    b = select_bias([1.0, 2.0, 3.0], [20.0, 28.0, 30.0], target_cost=2.0)
    np.testing.assert_allclose(b, [0.0, 1.0, 0.0], atol=1e-12)


def _inner_targets(rng, values, size=3):
    """Targets in the inner 90% of the range, so the feasible segment is not tiny."""
    lo, hi = values.min(), values.max()
    return rng.uniform(lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo), size=size)


@pytest.mark.parametrize("seed", range(40))
def test_primal_matches_grid_search(seed):
    rng = np.random.default_rng(seed)
    d, p = _random_experts(rng)
    for target in _inner_targets(rng, d):
        b = select_bias(d, p, target_cost=target)
        assert b.shape == (3,) and b.dtype == np.float64
        validate_bias(b, 3)
        assert b @ d == pytest.approx(target, rel=1e-9)
        grid, direction = _line_grid(d, target)
        assert len(grid) >= 10
        best = (grid @ p).max()
        # optimal: no feasible grid point is better ...
        assert b @ p >= best - 1e-9 * abs(best) - 1e-9
        # ... and the grid gets within one step of it.
        assert b @ p <= best + abs(direction @ p) / 4000 + 1e-9
        # the optimum is the upper hull at the target
        hull_d, hull_p = upper_hull(d, p)
        assert b @ p == pytest.approx(np.interp(target, hull_d, hull_p), rel=1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_dual_matches_grid_search(seed):
    rng = np.random.default_rng(1000 + seed)
    d, p = _random_experts(rng)
    for target in _inner_targets(rng, p):
        b = select_bias(d, p, target_performance=target)
        validate_bias(b, 3)
        assert b @ p == pytest.approx(target, rel=1e-9)
        grid, direction = _line_grid(p, target)
        assert len(grid) >= 10
        cheapest = (grid @ d).min()
        assert b @ d <= cheapest + 1e-9 * cheapest
        assert b @ d >= cheapest - abs(direction @ d) / 4000 - 1e-9


def test_primal_matches_coarse_simplex_grid():
    # A plain 2-D grid over the simplex (step 0.01): every grid point whose cost is
    # within 0.01 of the target is at most the LP value plus the slack's worth.
    d = np.array([1.0, 2.0, 3.0])
    p = np.array([20.0, 21.0, 30.0])
    target = 2.2
    b = select_bias(d, p, target_cost=target)
    g = np.arange(101) / 100.0
    b1, b2 = np.meshgrid(g, g, indexing="ij")
    grid = np.stack([b1.ravel(), b2.ravel(), 1.0 - b1.ravel() - b2.ravel()], axis=1)
    grid = grid[grid[:, 2] >= -1e-12]
    near = grid[np.abs(grid @ d - target) <= 0.01 + 1e-12]
    slope = 10.0  # max |dp/dd| between experts
    assert (near @ p).max() <= b @ p + slope * 0.01 + 1e-9
    assert (near @ p).max() >= b @ p - slope * 0.01 - 1e-9


@pytest.mark.parametrize("seed", range(20))
def test_primal_dual_consistency(seed):
    rng = np.random.default_rng(2000 + seed)
    d = np.sort(rng.uniform(1.0, 50.0, size=4))
    p = rng.uniform(0.0, 40.0, size=4)
    hull_d, hull_p = upper_hull(d, p)
    # the hull rises up to the best expert; there the dual inverts the primal
    peak = hull_d[np.argmax(hull_p)]
    for target in rng.uniform(d.min(), peak, size=3):
        b = select_bias(d, p, target_cost=target)
        perf = float(b @ p)
        b_dual = select_bias(d, p, target_performance=perf)
        assert b_dual @ p == pytest.approx(perf, rel=1e-9)
        assert b_dual @ d == pytest.approx(target, rel=1e-7)


def test_dual_cheaper_than_target_when_hull_falls():
    # past the best expert (cost 2) spending more data only loses performance:
    # the dual meets the primal's performance at a lower cost.
    d, p = [1.0, 2.0, 3.0], [10.0, 30.0, 20.0]
    perf = select_bias(d, p, target_cost=2.5) @ p
    assert perf == pytest.approx(25.0)
    b = select_bias(d, p, target_performance=perf)
    assert b @ np.asarray(d) == pytest.approx(1.75)


@pytest.mark.parametrize("fraction, psnr, expected", [
    (1.0, 33.3, [0.0, 0.0, 1.0]),
    (0.5, 30.4, [0.0, 1 - 2.8 / 27.4, 2.8 / 27.4]),
    (1.0 / 3.0, 28.4, [1 - 2.5 / 7.9, 2.5 / 7.9, 0.0]),
])
def test_super_resolution_setting(fraction, psnr, expected):
    target = SR_COSTS.max() * fraction
    b = select_bias(SR_COSTS, SR_PSNR, target_cost=target)
    np.testing.assert_allclose(b, expected, atol=1e-9)
    assert b @ SR_COSTS == pytest.approx(target, rel=1e-9)
    assert round(float(b @ SR_PSNR), 1) == psnr   # Table IV, Benchmark Experts (ESPCN)


def test_targets_at_the_ends_with_float_noise():
    b = select_bias(SR_COSTS, SR_PSNR, target_cost=13.9 * (1 - 1e-12))
    np.testing.assert_allclose(b, [1.0, 0.0, 0.0])
    b = select_bias(SR_COSTS, SR_PSNR, target_cost=49.2 * (1 + 1e-12))
    np.testing.assert_allclose(b, [0.0, 0.0, 1.0])
    b = select_bias(SR_COSTS, SR_PSNR, target_performance=33.3)
    np.testing.assert_allclose(b, [0.0, 0.0, 1.0])


def test_out_of_range_cost_names_the_interval():
    with pytest.raises(ValueError, match=r"target_cost 5\.0 is outside the feasible interval "
                                         r"\[13\.9, 49\.2\] \(the smallest and largest expert "
                                         r"data cost\)"):
        select_bias(SR_COSTS, SR_PSNR, target_cost=5.0)
    with pytest.raises(ValueError, match=r"\[13\.9, 49\.2\]"):
        select_bias(SR_COSTS, SR_PSNR, target_cost=49.2 * (1 + 1e-6))


def test_out_of_range_performance_names_the_interval():
    with pytest.raises(ValueError, match=r"target_performance 34\.0 is outside the feasible "
                                         r"interval \[27\.6, 33\.3\]"):
        select_bias(SR_COSTS, SR_PSNR, target_performance=34.0)


def test_exactly_one_target():
    with pytest.raises(ValueError, match="exactly one of target_cost"):
        select_bias(SR_COSTS, SR_PSNR)
    with pytest.raises(ValueError, match="exactly one of target_cost"):
        select_bias(SR_COSTS, SR_PSNR, target_cost=20.0, target_performance=30.0)


@pytest.mark.parametrize("d, p, message", [
    ([1.0, 2.0], [1.0, 2.0, 3.0], "data_costs has 2 entries but performances has 3"),
    ([[1.0, 2.0]], [[1.0, 2.0]], "non-empty 1-D"),
    ([], [], "non-empty 1-D"),
    ([1.0, np.inf], [1.0, 2.0], "data_costs must be finite"),
    ([1.0, 2.0], [np.nan, 2.0], "performances must be finite"),
    ([0.0, 2.0], [1.0, 2.0], r"data_costs must be > 0"),
    ([-1.0, 2.0], [1.0, 2.0], r"data_costs must be > 0"),
])
def test_select_bias_input_errors(d, p, message):
    with pytest.raises(ValueError, match=message):
        select_bias(d, p, target_cost=1.5)


@pytest.mark.parametrize("target", [np.nan, np.inf, "abc"])
def test_bad_target(target):
    with pytest.raises(ValueError, match="target_cost must be"):
        select_bias(SR_COSTS, SR_PSNR, target_cost=target)


def test_single_expert_and_equal_costs():
    np.testing.assert_array_equal(select_bias([3.0], [1.0], target_cost=3.0), [1.0])
    # equal costs: only the performance decides
    b = select_bias([2.0, 2.0, 2.0], [1.0, 5.0, 3.0], target_cost=2.0)
    np.testing.assert_allclose(b, [0.0, 1.0, 0.0], atol=1e-12)


def test_tied_performances_give_an_optimal_value():
    # collinear experts: b is not unique but the value is
    d, p = [1.0, 2.0, 3.0], [10.0, 20.0, 30.0]
    b = select_bias(d, p, target_cost=2.0)
    validate_bias(b, 3)
    assert b @ np.asarray(d) == pytest.approx(2.0)
    assert b @ np.asarray(p) == pytest.approx(20.0)


# --------------------------------------------------------------------------- upper_hull

def test_upper_hull_known_points():
    d = [1.0, 2.0, 2.0, 3.0, 1.5, 2.5, 4.0]
    p = [1.0, 3.0, 2.0, 4.0, 2.0, 3.0, 3.5]
    # (2, 2) duplicate cost below (2, 3); (1.5, 2) on the chord (1,1)-(2,3);
    # (2.5, 3) below the chord (2,3)-(3,4).
    hull_d, hull_p = upper_hull(d, p)
    np.testing.assert_array_equal(hull_d, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(hull_p, [1.0, 3.0, 4.0, 3.5])


def test_upper_hull_drops_point_below_chord():
    hull_d, hull_p = upper_hull([3.0, 1.0, 2.0], [30.0, 20.0, 21.0])
    np.testing.assert_array_equal(hull_d, [1.0, 3.0])
    np.testing.assert_array_equal(hull_p, [20.0, 30.0])


def test_upper_hull_is_concave_and_above_all_points():
    rng = np.random.default_rng(7)
    d = rng.uniform(1.0, 10.0, size=12)
    p = rng.uniform(0.0, 5.0, size=12)
    hull_d, hull_p = upper_hull(d, p)
    assert np.all(np.diff(hull_d) > 0)
    slopes = np.diff(hull_p) / np.diff(hull_d)
    assert np.all(np.diff(slopes) < 0)
    assert np.all(np.interp(d, hull_d, hull_p) >= p - 1e-12)
    assert hull_d[0] == d.min() and hull_d[-1] == d.max()
