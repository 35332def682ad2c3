"""The resistance point of a poisoning curve: how large an attacker fraction it takes before the
backdoor is learned.

A poisoning curve is backdoor accuracy against the attacker fraction. Bagdasaryan & Shmatikov,
"Mithridates: Auditing and Boosting Backdoor Resistance of Machine Learning Pipelines" (ACM CCS
2024, arXiv:2302.04977) measure a pipeline's resistance as "the minimum number of training
inputs that must be compromised before the model learns any backdoor" (the paper's abstract).
Their code (github.com/ebagdasa/mithridates, ``mithridates/utils.py``,
``get_inflection_point``) sorts the curve by poisoning ratio, smooths the backdoor accuracies
with a Gaussian filter of width 2 *samples*, takes the discrete second derivative
(``np.gradient`` twice, in sample-index steps) and returns the first sample where its sign
changes and whose raw backdoor accuracy is between 15% and 90%; its README calls this the
"inflection point" of the curve, plotted on a log axis.

That procedure is not well defined for our sweeps: smoothing and differencing in sample-index
steps make the answer depend on which fractions were run (adding points moves it), a width-2
filter blurs most of a 4-8 point federated sweep, it can only return a sampled fraction, and it
fails when no sign change falls in the window. :func:`resistance_point` keeps its idea (smooth
the curve, find where its growth turns, on a log-fraction axis) with a fitted curve in place of
the filter; the exact method is in its docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import least_squares

#: z = k (log f - centre) where the logistic's second derivative is largest: sigma(z) =
#: (3 - sqrt 3) / 6 ~ 0.211, z = -ln(2 + sqrt 3) ~ -1.317.
KNEE_Z = -math.log(2.0 + math.sqrt(3.0))

_Array = NDArray[np.float64]

_GRID = 61  # coarse grid points per parameter (at least)
_MAX_GRID = 401  # coarse grid points for the centre (at most)
_STARTS = 6  # grid points refined
_TOLERANCE = 1e-12  # least_squares' relative ftol and xtol: refine to (nearly) float64 precision
_SHARPEST = 50.0  # steepest slope k, in units of 1 / (smallest gap between log fractions)
_FLATTEST = 0.25  # flattest slope k, in units of 1 / (log-fraction span)


@dataclass(frozen=True)
class LogisticFit:
    """``acc(f) = low + (high - low) * sigmoid(slope * (log f - centre))``, ``acc(0) = low``."""

    low: float
    high: float
    centre: float  # log fraction of the midpoint (the inflection point)
    slope: float  # per unit of log fraction
    loss: float  # sum of squared residuals

    @property
    def rise(self) -> float:
        return self.high - self.low

    @property
    def knee(self) -> float:
        """The fraction where the curve's growth accelerates most (max of d2 acc / d(log f)2)."""
        return math.exp(self.centre + KNEE_Z / self.slope)

    @property
    def inflection(self) -> float:
        """The fraction where growth stops accelerating (the logistic's midpoint)."""
        return math.exp(self.centre)

    def __call__(self, fractions: ArrayLike) -> NDArray[np.float64]:
        f = np.asarray(fractions, dtype=float)
        with np.errstate(divide="ignore"):
            s = _sigmoid(self.slope * (np.log(f) - self.centre))
        return self.low + self.rise * np.where(f > 0, s, 0.0)


def _sigmoid(z: _Array) -> _Array:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def _best_levels(
    s: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """For each row of shapes ``s`` (m, n): the least-squares ``low, high`` in [0, 1] of
    ``y ~ low (1 - s) + high s`` and its loss. Convex in (low, high), so the box optimum is the
    free optimum if feasible, else the best of the four edges' clipped 1-d optima."""
    u = 1.0 - s
    a, b, c = (u * u).sum(1), (u * s).sum(1), (s * s).sum(1)
    p, q = (u * y).sum(1), (s * y).sum(1)
    tiny = 1e-12

    def loss(lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.float64]:
        # From the residuals, not from the expanded quadratic: near a step the loss is ~1e-20,
        # far below the expansion's round-off, and the search must still see it fall.
        residual = y - lo[:, None] * u - hi[:, None] * s
        out: NDArray[np.float64] = (residual * residual).sum(1)
        return out

    det = a * c - b * b
    safe = np.where(np.abs(det) > tiny, det, 1.0)
    lo_free, hi_free = (c * p - b * q) / safe, (a * q - b * p) / safe
    feasible = (np.abs(det) > tiny) & (lo_free >= 0) & (lo_free <= 1)
    feasible &= (hi_free >= 0) & (hi_free <= 1)
    candidates = [(lo_free, hi_free, np.where(feasible, loss(lo_free, hi_free), np.inf))]
    for edge in (0.0, 1.0):
        lo = np.full_like(a, edge)
        hi = np.clip((q - edge * b) / np.maximum(c, tiny), 0.0, 1.0)
        candidates.append((lo, hi, loss(lo, hi)))
        hi = np.full_like(a, edge)
        lo = np.clip((p - edge * b) / np.maximum(a, tiny), 0.0, 1.0)
        candidates.append((lo, hi, loss(lo, hi)))
    losses = np.stack([cand[2] for cand in candidates])
    pick = losses.argmin(0)
    rows = np.arange(len(a))
    low = np.stack([cand[0] for cand in candidates])[pick, rows]
    high = np.stack([cand[1] for cand in candidates])[pick, rows]
    return low, high, losses[pick, rows]


def fit_logistic(fractions: ArrayLike, backdoor_acc: ArrayLike) -> LogisticFit | None:
    """Least-squares fit of a logistic in log fraction to a poisoning curve (see
    :func:`resistance_point` for the model and the search); ``None`` with fewer than two
    distinct positive fractions. Points at fraction 0 constrain the floor ``low``."""
    f, y = _validated(fractions, backdoor_acc)
    positive = f > 0
    t_pos = np.log(f[positive])
    distinct = np.unique(t_pos)
    if distinct.size < 2:
        return None
    span = float(distinct[-1] - distinct[0])
    min_gap = float(np.diff(distinct).min())
    c_bounds = (float(distinct[0]) - span, float(distinct[-1]) + span)
    lk_bounds = (math.log(_FLATTEST / span), math.log(_SHARPEST / min_gap))
    if lk_bounds[1] < lk_bounds[0]:
        lk_bounds = (lk_bounds[1], lk_bounds[0])
    t = np.where(positive, np.log(np.where(positive, f, 1.0)), 0.0)

    def evaluate(centres: _Array, log_slopes: _Array) -> tuple[_Array, _Array, _Array]:
        z = np.exp(log_slopes)[:, None] * (t[None, :] - centres[:, None])
        s = np.where(positive[None, :], _sigmoid(z), 0.0)
        return _best_levels(s, y)

    # Coarse grid: centres a quarter of the smallest gap apart, so that a step between any two
    # neighbouring fractions has a grid point inside it.
    n_c = int(np.clip(math.ceil((c_bounds[1] - c_bounds[0]) / (min_gap / 4)) + 1, _GRID, _MAX_GRID))
    c_grid, lk_grid = np.meshgrid(np.linspace(*c_bounds, n_c), np.linspace(*lk_bounds, _GRID))
    cs, lks = c_grid.ravel(), lk_grid.ravel()
    lows, highs, losses = evaluate(cs, lks)

    def shape(c: float, lk: float) -> _Array:
        """The sigmoid at the data (0 at fraction 0)."""
        return np.where(positive, _sigmoid(math.exp(lk) * (t - c)), 0.0)

    def residuals(params: _Array) -> _Array:
        low, high, c, lk = params
        fitted: _Array = low + (high - low) * shape(c, lk) - y
        return fitted

    def jacobian(params: _Array) -> _Array:
        """The residuals' derivatives in (low, high, centre, log slope)."""
        low, high, c, lk = params
        s = shape(c, lk)
        ds = (high - low) * math.exp(lk) * s * (1.0 - s)
        return np.stack([1.0 - s, s, -ds, ds * (t - c)], axis=1)

    lower = np.array([0.0, 0.0, c_bounds[0], lk_bounds[0]])
    upper = np.array([1.0, 1.0, c_bounds[1], lk_bounds[1]])

    def refine(start: _Array) -> tuple[_Array, float]:
        """Bounded least squares from a grid point. The dogleg with rectangular trust regions
        keeps a parameter exactly on its bound (a floor of 0, a flat curve's zero rise), where
        the trust-region reflective method stays a hair inside; and no gradient tolerance,
        which is absolute: near a step the loss is ~1e-20 and must still be minimised."""
        result = least_squares(
            residuals,
            start,
            jac=jacobian,
            bounds=(lower, upper),
            method="dogbox",
            ftol=_TOLERANCE,
            xtol=_TOLERANCE,
            gtol=None,
        )
        return result.x, float((result.fun**2).sum())

    # The loss has local minima (a sharp step fits between any two neighbouring fractions):
    # refine the best few grid points and keep the best result.
    starts = np.argsort(losses, kind="stable")[:_STARTS]
    params, loss = min(
        (refine(np.array([lows[i], highs[i], cs[i], lks[i]])) for i in starts),
        key=lambda result: result[1],
    )
    low, high, c, lk = (float(v) for v in params)
    return LogisticFit(low, high, c, math.exp(lk), loss)


def _validated(
    fractions: ArrayLike, backdoor_acc: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    f = np.asarray(fractions, dtype=float).ravel()
    y = np.asarray(backdoor_acc, dtype=float).ravel()
    if f.shape != y.shape:
        raise ValueError(f"{f.size} fractions but {y.size} backdoor accuracies")
    keep = np.isfinite(f) & np.isfinite(y)
    f, y = f[keep], y[keep]
    if ((f < 0) | (f > 1)).any():
        raise ValueError("attacker fractions must be in [0, 1]")
    if ((y < 0) | (y > 1)).any():
        raise ValueError("backdoor accuracies must be fractions in [0, 1]")
    return f, y


def resistance_point(
    fractions: ArrayLike,
    backdoor_acc: ArrayLike,
    *,
    point: Literal["knee", "inflection"] = "knee",
    min_rise: float = 0.1,
) -> float:
    """The attacker fraction at which a poisoning curve turns upward: below it the backdoor is
    not learned, above it backdoor accuracy climbs steeply. NaN when the curve does not say.

    Method (after Mithridates, Bagdasaryan & Shmatikov, CCS 2024; see the module docstring):

    1. Pairs with a NaN are dropped; fractions must be in [0, 1] and accuracies in [0, 1].
       Repeated fractions (seeds) are all kept: the fit weighs each run equally.
    2. The curve is smoothed by a least-squares fit of a logistic in log fraction,
       ``acc(f) = low + (high - low) / (1 + exp(-k (log f - c)))`` with ``0 <= low, high <= 1``,
       ``k > 0``; a point at fraction 0 counts as ``acc = low`` (the limit as f -> 0). For each
       (c, k), ``low`` and ``high`` are solved exactly (a box-constrained linear least squares);
       (c, log k) start from a grid: c in [log f_min - s, log f_max + s] in steps of g / 4
       (61 to 401 values), log k on 61 values for k in [0.25 / s, 50 / g] (f_min, f_max: the
       smallest and largest positive fractions, s = log(f_max / f_min), g = the smallest gap
       between distinct log fractions; k spans near-linear to a step between two neighbouring
       fractions). The 6 best grid points are refined by bounded least squares in
       (low, high, c, log k) within those bounds (SciPy's ``least_squares``); the fit with the
       least loss is used.
    3. ``point="knee"`` (default) returns ``exp(c - ln(2 + sqrt 3) / k)``: where the fitted
       curve's second derivative in log fraction is largest, i.e. where its growth turns from
       flat to steep (the curve has risen (3 - sqrt 3) / 6 = 21% of the way from ``low`` to
       ``high``): the least fraction that makes the backdoor take hold.
       ``point="inflection"`` returns ``exp(c)``, the midpoint where growth stops
       accelerating (the Mithridates code's "inflection point").

    NaN when there are fewer than 3 distinct fractions or fewer than 2 positive ones; when
    the curve is flat or falls (data range or fitted rise ``high - low`` below ``min_rise``);
    and when the point lies outside the positive fractions that were run (e.g. the backdoor
    is already learned at the smallest fraction): the sweep cannot place it.

    A step between two neighbouring fractions gives about their geometric mean. The result
    does not change when points on the flat floor far below the rise are added, and it moves
    up when the curve moves to larger fractions.
    """
    if point not in ("knee", "inflection"):
        raise ValueError(f"point={point!r} must be 'knee' or 'inflection'")
    if min_rise < 0:
        raise ValueError(f"min_rise={min_rise} must be >= 0")
    f, y = _validated(fractions, backdoor_acc)
    if np.unique(f).size < 3 or y.max() - y.min() < min_rise:
        return math.nan
    fit = fit_logistic(f, y)
    if fit is None or fit.rise < min_rise:
        return math.nan
    value = fit.knee if point == "knee" else fit.inflection
    positive = f[f > 0]
    if not positive.min() * (1 - 1e-9) <= value <= positive.max() * (1 + 1e-9):
        return math.nan
    return float(value)
