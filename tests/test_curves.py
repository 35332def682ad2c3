from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbackdoor.curves import (
    KNEE_Z,
    RESISTANCE_METHODS,
    ResistanceMethod,
    fit_logistic,
    mithridates_point,
    resistance_point,
)

FRACTIONS = np.geomspace(0.01, 0.5, 12)


def logistic(fractions: np.ndarray, centre: float, slope: float = 6.0) -> np.ndarray:
    """Backdoor accuracy 0.02 -> 0.98, steepest at ``centre``, in log fraction."""
    with np.errstate(divide="ignore"):
        z = slope * (np.log(fractions) - math.log(centre))
    return 0.02 + 0.96 / (1 + np.exp(-z))


def test_knee_of_an_exact_logistic_is_where_its_second_derivative_peaks() -> None:
    acc = logistic(FRACTIONS, centre=0.1, slope=6.0)

    knee = resistance_point(FRACTIONS, acc)
    midpoint = resistance_point(FRACTIONS, acc, point="inflection")

    assert knee == pytest.approx(0.1 * math.exp(KNEE_Z / 6.0), rel=1e-5)  # 0.0803
    assert midpoint == pytest.approx(0.1, rel=1e-5)
    # at the knee the curve has risen (3 - sqrt 3) / 6 of the way
    fit = fit_logistic(FRACTIONS, acc)
    assert fit is not None
    assert fit(knee) == pytest.approx(0.02 + 0.96 * (3 - math.sqrt(3)) / 6, abs=1e-6)


def test_knee_is_the_peak_of_the_numerical_second_derivative() -> None:
    t = np.linspace(math.log(0.01), math.log(0.5), 20001)
    acc = logistic(np.exp(t), centre=0.05, slope=4.0)
    curvature = np.gradient(np.gradient(acc, t), t)

    knee = resistance_point(FRACTIONS, logistic(FRACTIONS, centre=0.05, slope=4.0))

    assert knee == pytest.approx(math.exp(t[curvature.argmax()]), rel=1e-3)


def test_a_step_gives_about_the_geometric_mean_of_its_two_fractions() -> None:
    fractions = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]

    point = resistance_point(fractions, [0, 0, 0, 1, 1, 1])

    assert 0.05 < point < 0.1
    assert point == pytest.approx(math.sqrt(0.05 * 0.1), rel=0.03)


@pytest.mark.parametrize(
    "acc",
    [
        [0.01] * 6,  # flat: no backdoor at any fraction
        [0.01, 0.03, 0.02, 0.05, 0.04, 0.06],  # noise below min_rise
        [0.9] * 6,  # flat at the top
        [1, 1, 1, 0, 0, 0],  # falling
    ],
)
def test_a_curve_that_does_not_rise_has_no_resistance_point(acc: list[float]) -> None:
    assert math.isnan(resistance_point([0.01, 0.02, 0.05, 0.1, 0.2, 0.5], acc))


def test_too_few_points_have_no_resistance_point() -> None:
    assert math.isnan(resistance_point([], []))
    assert math.isnan(resistance_point([0.1, 0.2], [0.0, 1.0]))
    assert math.isnan(resistance_point([0.1, 0.1, 0.2, 0.2], [0.0, 0.0, 1.0, 1.0]))  # 2 fractions
    assert math.isnan(resistance_point([0.0, 0.0, 0.3], [0.0, 0.01, 0.9]))  # 1 positive fraction


def test_fraction_zero_counts_as_the_floor() -> None:
    acc = logistic(FRACTIONS, centre=0.1)
    with_zero = resistance_point(np.r_[0.0, 0.0, FRACTIONS], np.r_[0.02, 0.02, acc])

    assert with_zero == pytest.approx(resistance_point(FRACTIONS, acc), rel=1e-5)
    # learned already at the smallest fraction run: the sweep cannot place the point
    assert math.isnan(resistance_point([0.0, 0.1, 0.2, 0.3], [0.0, 0.95, 1.0, 1.0]))


def test_nan_pairs_are_dropped_and_bad_input_is_refused() -> None:
    acc = logistic(FRACTIONS, centre=0.1)

    with_nan = resistance_point(np.r_[FRACTIONS, 0.3], np.r_[acc, np.nan])

    assert with_nan == pytest.approx(resistance_point(FRACTIONS, acc), rel=1e-6)
    with pytest.raises(ValueError, match="2 x values but 1 backdoor"):
        resistance_point([0.1, 0.2], [0.0])
    with pytest.raises(ValueError, match=r"x values must be >= 0, got \[-0.1\]"):
        resistance_point([-0.1, 0.2, 0.5], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"x values must be finite, got \[inf\]"):
        resistance_point([0.1, 0.2, np.inf], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\], got \[50.0, 100.0\]"):
        resistance_point([0.1, 0.2, 0.3], [0.0, 50.0, 100.0])  # percentages
    with pytest.raises(ValueError, match="point"):
        resistance_point(FRACTIONS, acc, point="middle")  # type: ignore[arg-type]


def test_points_on_the_flat_floor_far_below_do_not_move_it() -> None:
    acc = logistic(FRACTIONS, centre=0.1)
    below = np.array([1e-5, 1e-4, 1e-3])
    step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5], [0, 0, 0, 1, 1, 1]

    more = resistance_point(np.r_[below, FRACTIONS], np.r_[logistic(below, 0.1), acc])
    step_more = resistance_point([*below, *step[0]], [0, 0, 0, *step[1]])

    assert more == pytest.approx(resistance_point(FRACTIONS, acc), rel=1e-5)
    assert step_more == pytest.approx(resistance_point(*step), rel=1e-3)


def test_seeds_at_the_same_fraction_are_all_fitted() -> None:
    rng = np.random.default_rng(0)
    acc = logistic(FRACTIONS, centre=0.1)
    noisy = np.clip(np.repeat(acc, 3) + rng.normal(0, 0.03, 3 * len(acc)), 0, 1)

    point = resistance_point(np.repeat(FRACTIONS, 3), noisy)

    assert point == pytest.approx(resistance_point(FRACTIONS, acc), rel=0.05)


@settings(max_examples=25, deadline=None)
@given(
    centre=st.floats(0.02, 0.2),
    factor=st.floats(1.1, 2.0),
    slope=st.floats(2.0, 12.0),
)
def test_a_curve_moved_to_larger_fractions_moves_its_point_up(
    centre: float, factor: float, slope: float
) -> None:
    fractions = np.geomspace(0.002, 0.9, 15)

    low = resistance_point(fractions, logistic(fractions, centre, slope))
    high = resistance_point(fractions, logistic(fractions, centre * factor, slope))

    assert low < high
    assert high / low == pytest.approx(factor, rel=1e-3)  # moved by the same factor


@pytest.mark.parametrize("point", ["knee", "inflection"])
def test_the_logistic_point_is_in_the_units_of_x(point: str) -> None:
    # Prepare: the same curve with x as a fraction, in percent and as a count of 2000 samples
    acc = logistic(FRACTIONS, centre=0.1, slope=5.0)

    # Execute
    as_fraction = resistance_point(FRACTIONS, acc, point=point)  # type: ignore[arg-type]
    in_percent = resistance_point(100 * FRACTIONS, acc, point=point)  # type: ignore[arg-type]
    as_count = resistance_point(2000 * FRACTIONS, acc, point=point)  # type: ignore[arg-type]

    # Assert
    assert in_percent == pytest.approx(100 * as_fraction, rel=1e-6)
    assert as_count == pytest.approx(2000 * as_fraction, rel=1e-6)
    assert in_percent > 1  # x above 1 is accepted


# Mithridates' published MNIST poisoning curve (their README, github.com/ebagdasa/mithridates):
# poison ratio in % of the dataset against backdoor accuracy in %. Their README concludes that
# the model resists poisoning of 0.2% of the dataset.
MNIST_PERCENT = np.array(
    [0.033, 0.067, 0.100, 0.133, 0.167, 0.200, 0.233, 0.267, 0.300, 0.333, 0.367, 0.400]
)
MNIST_ACC = (
    np.array([11.15, 11.35, 13.30, 66.28, 49.02, 17.78, 67.98, 95.61, 82.53, 95.04, 86.56, 92.34])
    / 100
)


def test_the_method_names_are_the_literal_values() -> None:
    assert RESISTANCE_METHODS == get_args(ResistanceMethod)
    assert RESISTANCE_METHODS == ("logistic", "mithridates", "mithridates-simple")


def test_mithridates_on_their_published_mnist_curve() -> None:
    # Worked out with scipy: the smoothed curve's second difference changes sign only between
    # samples 5 and 6 (index 5, raw accuracy 17.78%, inside (15%, 90%)); the first accuracy above
    # 50% is 66.28% at 0.133%.
    full = resistance_point(MNIST_PERCENT, MNIST_ACC, method="mithridates")
    simple = resistance_point(MNIST_PERCENT, MNIST_ACC, method="mithridates-simple")

    assert full == 0.200
    assert simple == 0.133
    assert full == mithridates_point(MNIST_PERCENT, MNIST_ACC)
    assert simple == mithridates_point(MNIST_PERCENT, MNIST_ACC, simplified=True)


def test_the_logistic_point_of_the_published_mnist_curve() -> None:
    knee = resistance_point(MNIST_PERCENT, MNIST_ACC)
    midpoint = resistance_point(MNIST_PERCENT, MNIST_ACC, point="inflection")

    # 0.23134 and 0.23249 (% of the dataset): a step between 0.2 and 0.233, just above their 0.2.
    # Any steep enough step in that gap fits equally well (the loss agrees to ~1e-16), so where
    # the optimiser stops varies a little with the order of the runs: over 60 orders the knee
    # ranged over 0.23134-0.23155 and the midpoint over 0.23249-0.23256.
    assert knee == pytest.approx(0.2314, abs=3e-4)
    assert midpoint == pytest.approx(0.2325, abs=2e-4)
    assert knee == pytest.approx(100 * resistance_point(MNIST_PERCENT / 100, MNIST_ACC), rel=1e-6)
    as_fraction = resistance_point(MNIST_PERCENT / 100, MNIST_ACC, point="inflection")
    assert midpoint == pytest.approx(100 * as_fraction, rel=1e-6)


def test_simplified_mithridates_is_the_first_x_strictly_above_half() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0]

    point = mithridates_point(x, [0.1, 0.2, 0.5, 0.51, 0.9], simplified=True)

    assert point == 4.0  # 0.5 at x = 3 is not above 0.5


def test_simplified_mithridates_with_nothing_above_half_is_nan() -> None:
    # Their code would return the first ratio here (np.argmax of all-False is 0).
    assert math.isnan(
        mithridates_point([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.5, 0.3], simplified=True)
    )


def test_mithridates_by_hand() -> None:
    # The smoothed second difference is positive on the first three samples and negative on the
    # last three: the sign change is at index 2, raw accuracy 0.3, inside (0.15, 0.9).
    assert mithridates_point([1, 2, 3, 4, 5, 6], [0.0, 0.05, 0.3, 0.7, 0.95, 1.0]) == 3.0


def test_mithridates_with_no_sign_change_in_the_window_is_nan() -> None:
    # A sharp step changes sign at its last floor sample (index 2, raw accuracy 0.05): outside
    # (0.15, 0.9), so nothing is kept (their code raises IndexError).
    assert math.isnan(mithridates_point([1, 2, 3, 4, 5, 6], [0.0, 0.02, 0.05, 0.95, 0.97, 1.0]))
    assert math.isnan(mithridates_point([1, 2, 3, 4, 5, 6], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    assert math.isnan(mithridates_point([1, 2, 3, 4], [0.5] * 4))  # flat: no sign change


def test_mithridates_needs_three_distinct_x_and_a_pair_without_nan() -> None:
    assert math.isnan(mithridates_point([], []))
    assert math.isnan(mithridates_point([0.1], [0.5]))
    assert math.isnan(mithridates_point([0.1, 0.1, 0.2, 0.2], [0.2, 0.3, 0.6, 0.7]))
    assert math.isnan(mithridates_point([0.1, 0.2, 0.3], [np.nan, np.nan, np.nan]))
    # the simplified variant needs one point only
    assert mithridates_point([0.2, 0.2], [0.4, 0.8], simplified=True) == 0.2


def test_mithridates_drops_nan_pairs() -> None:
    x = np.r_[MNIST_PERCENT, 0.05, np.nan]
    acc = np.r_[MNIST_ACC, np.nan, 0.5]

    assert mithridates_point(x, acc) == 0.200
    assert mithridates_point(x, acc, simplified=True) == 0.133


@pytest.mark.parametrize("method", ["mithridates", "mithridates-simple"])
def test_seeds_at_the_same_x_are_averaged_for_mithridates(method: ResistanceMethod) -> None:
    # Prepare: two seeds at each ratio, 0.04 either side of the published curve
    x = np.repeat(MNIST_PERCENT, 2)
    seeds = np.repeat(MNIST_ACC, 2) + np.tile([0.04, -0.04], MNIST_ACC.size)

    # Execute
    point = resistance_point(x, seeds, method=method)

    # Assert (taken as 24 neighbouring samples, the full variant would give 0.1)
    assert point == resistance_point(MNIST_PERCENT, MNIST_ACC, method=method)


def test_simplified_mithridates_asks_the_mean_of_the_seeds() -> None:
    # means 0.3, 0.6, 0.9: one seed above 0.5 at x = 1 is not enough
    x = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]

    point = mithridates_point(x, [0.6, 0.0, 0.7, 0.5, 0.9, 0.9], simplified=True)

    assert point == 2.0


@pytest.mark.parametrize("method", ["mithridates", "mithridates-simple"])
def test_the_order_of_the_runs_does_not_matter_to_mithridates(method: ResistanceMethod) -> None:
    order = np.random.default_rng(3).permutation(MNIST_PERCENT.size)

    shuffled = resistance_point(MNIST_PERCENT[order], MNIST_ACC[order], method=method)

    assert shuffled == resistance_point(MNIST_PERCENT, MNIST_ACC, method=method)


def test_the_order_of_the_runs_does_not_matter_to_the_logistic_fit() -> None:
    # A curve whose fit is well determined (on the MNIST curve the order moves the point
    # within its flat optimum, see above).
    acc = logistic(FRACTIONS, centre=0.1, slope=5.0)
    order = np.random.default_rng(3).permutation(FRACTIONS.size)

    shuffled = resistance_point(FRACTIONS[order], acc[order])

    assert shuffled == pytest.approx(resistance_point(FRACTIONS, acc), rel=1e-6)


def test_an_unknown_method_is_refused_naming_the_choices() -> None:
    with pytest.raises(
        ValueError,
        match="method='inflection' must be one of logistic, mithridates, mithridates-simple",
    ):
        resistance_point(MNIST_PERCENT, MNIST_ACC, method="inflection")  # type: ignore[arg-type]


def test_mithridates_refuses_what_the_logistic_method_refuses() -> None:
    with pytest.raises(ValueError, match=r"x values must be >= 0, got \[-0.1\]"):
        mithridates_point([-0.1, 0.2, 0.3], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="fractions in"):
        mithridates_point(MNIST_PERCENT, 100 * MNIST_ACC)  # percentages
