"""The resistance point of a poisoning curve: how much poisoning it takes before the backdoor
is learned.

A poisoning curve is backdoor accuracy (a fraction in [0, 1]) against an amount of poisoning
``x``: the attacker fraction, the share of the training samples that is poisoned, a count of
poisoned samples, a percentage; any non-negative quantity, and the resistance point comes back
in its units. Bagdasaryan & Shmatikov, "Mithridates: Auditing and Boosting Backdoor Resistance
of Machine Learning Pipelines" (ACM CCS 2024, arXiv:2302.04977) measure a pipeline's resistance
as "the minimum number of training inputs that must be compromised before the model learns any
backdoor" (the paper's abstract). Two ways of reading it off a curve are offered,
:func:`resistance_point`'s ``method``:

``"logistic"`` (the default)
    Fit a logistic in log x and return its knee (or its midpoint); the exact method is in
    :func:`resistance_point`'s docstring. It uses the x values themselves, so it is
    scale-equivariant (x in percent gives 100 times the answer for x as a fraction), can fall
    between the x values run, does not move when points are added on the flat floor, and
    weighs every seed. Use it for federated sweeps: a few (4-8) unevenly spaced x, several
    seeds.
``"mithridates"`` and ``"mithridates-simple"``
    Their code's own computation (github.com/ebagdasa/mithridates, ``mithridates/utils.py``,
    ``get_inflection_point``; here :func:`mithridates_point`): sort the curve by x, smooth the
    backdoor accuracies with a Gaussian filter of width 2 *samples*, take the discrete second
    derivative (``np.gradient`` twice, in sample-index steps) and return the x of the first
    sign change whose raw backdoor accuracy is strictly between 15% and 90% (their README's
    "inflection point", plotted on a log axis); or, simplified, the first x whose accuracy is
    above 50%. Use it to compare with numbers they report, on dense, evenly spaced sweeps like
    theirs (their MNIST curve has 12 poison ratios from 0.033% to 0.4%). It is not well defined
    for sparse sweeps: smoothing and differencing in sample-index steps make the answer depend
    on which x were run (adding points moves it), a width-2 filter blurs most of a 4-8 point
    curve, it can only return an x that was run, and it finds nothing when no sign change falls
    in the window (NaN here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import least_squares

#: How :func:`resistance_point` reads a curve (see the module docstring).
ResistanceMethod = Literal["logistic", "mithridates", "mithridates-simple"]
#: The values of :data:`ResistanceMethod`, for command-line choices and validation.
RESISTANCE_METHODS: tuple[str, ...] = ("logistic", "mithridates", "mithridates-simple")

#: z = k (log x - centre) where the logistic's second derivative is largest: sigma(z) =
#: (3 - sqrt 3) / 6 ~ 0.211, z = -ln(2 + sqrt 3) ~ -1.317.
KNEE_Z = -math.log(2.0 + math.sqrt(3.0))

_Array = NDArray[np.float64]

_GRID = 61  # coarse grid points per parameter (at least)
_MAX_GRID = 401  # coarse grid points for the centre (at most)
_STARTS = 6  # grid points refined
_TOLERANCE = 1e-12  # least_squares' relative ftol and xtol: refine to (nearly) float64 precision
_SHARPEST = 50.0  # steepest slope k, in units of 1 / (smallest gap between log x)
_FLATTEST = 0.25  # flattest slope k, in units of 1 / (span of log x)


@dataclass(frozen=True)
class LogisticFit:
    """``acc(x) = low + (high - low) * sigmoid(slope * (log x - centre))``, ``acc(0) = low``."""

    low: float
    high: float
    centre: float  # log x of the midpoint (the inflection point)
    slope: float  # per unit of log x
    loss: float  # sum of squared residuals

    @property
    def rise(self) -> float:
        return self.high - self.low

    @property
    def knee(self) -> float:
        """The x where the curve's growth accelerates most (max of d2 acc / d(log x)2)."""
        return math.exp(self.centre + KNEE_Z / self.slope)

    @property
    def inflection(self) -> float:
        """The x where growth stops accelerating (the logistic's midpoint)."""
        return math.exp(self.centre)

    def __call__(self, x: ArrayLike) -> NDArray[np.float64]:
        values = np.asarray(x, dtype=float)
        with np.errstate(divide="ignore"):
            s = _sigmoid(self.slope * (np.log(values) - self.centre))
        return self.low + self.rise * np.where(values > 0, s, 0.0)


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


def fit_logistic(x: ArrayLike, backdoor_acc: ArrayLike) -> LogisticFit | None:
    """Least-squares fit of a logistic in log x to a poisoning curve (see
    :func:`resistance_point` for the model and the search); ``None`` with fewer than two
    distinct positive x. Points at x = 0 constrain the floor ``low``."""
    f, y = _validated(x, backdoor_acc)
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
    # neighbouring x values has a grid point inside it.
    n_c = int(np.clip(math.ceil((c_bounds[1] - c_bounds[0]) / (min_gap / 4)) + 1, _GRID, _MAX_GRID))
    c_grid, lk_grid = np.meshgrid(np.linspace(*c_bounds, n_c), np.linspace(*lk_bounds, _GRID))
    cs, lks = c_grid.ravel(), lk_grid.ravel()
    lows, highs, losses = evaluate(cs, lks)

    def shape(c: float, lk: float) -> _Array:
        """The sigmoid at the data (0 at x = 0)."""
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

    # The loss has local minima (a sharp step fits between any two neighbouring x values):
    # refine the best few grid points and keep the best result.
    starts = np.argsort(losses, kind="stable")[:_STARTS]
    params, loss = min(
        (refine(np.array([lows[i], highs[i], cs[i], lks[i]])) for i in starts),
        key=lambda result: result[1],
    )
    low, high, c, lk = (float(v) for v in params)
    return LogisticFit(low, high, c, math.exp(lk), loss)


def _validated(x: ArrayLike, backdoor_acc: ArrayLike) -> tuple[_Array, _Array]:
    """The curve as float arrays without the pairs that hold a NaN (a run that did not say).

    x may be in any units but must be finite and non-negative; accuracies are fractions."""
    f = np.asarray(x, dtype=float).ravel()
    y = np.asarray(backdoor_acc, dtype=float).ravel()
    if f.shape != y.shape:
        raise ValueError(f"{f.size} x values but {y.size} backdoor accuracies")
    keep = ~(np.isnan(f) | np.isnan(y))
    f, y = f[keep], y[keep]
    if np.isinf(f).any():
        raise ValueError(f"x values must be finite, got {_shown(f[np.isinf(f)])}")
    if (f < 0).any():
        raise ValueError(f"x values must be >= 0, got {_shown(f[f < 0])}")
    outside = (y < 0) | (y > 1)
    if outside.any():
        raise ValueError(
            f"backdoor accuracies must be fractions in [0, 1], got {_shown(y[outside])}"
        )
    return f, y


def _shown(bad: _Array, most: int = 5) -> str:
    """The distinct bad values for an error message, the first ``most`` of them."""
    values = np.unique(bad).tolist()
    return str(values[:most])[:-1] + ", ...]" if len(values) > most else str(values)


def resistance_point(
    x: ArrayLike,
    backdoor_acc: ArrayLike,
    *,
    method: ResistanceMethod = "logistic",
    point: Literal["knee", "inflection"] = "knee",
    min_rise: float = 0.1,
) -> float:
    """The x at which a poisoning curve turns upward: below it the backdoor is not learned,
    above it backdoor accuracy climbs steeply. NaN when the curve does not say.

    Parameters
    ----------
    x : array_like
        The amount of poisoning of each run, in any units (attacker fraction, poisoned share,
        poisoned sample count, percent); finite and ``>= 0``. Repeated values (seeds) are
        allowed.
    backdoor_acc : array_like
        Each run's backdoor accuracy, a fraction in ``[0, 1]``. Pairs holding a NaN are dropped.
    method : {"logistic", "mithridates", "mithridates-simple"}
        ``"logistic"``: the fit below. ``"mithridates"``: Mithridates' own inflection point,
        ``"mithridates-simple"``: its simplified variant (first x above 50%); both are
        :func:`mithridates_point` and ignore ``point`` and ``min_rise``. The module docstring
        says when to use which.
    point : {"knee", "inflection"}
        For ``method="logistic"``: the knee (default) or the midpoint of the fitted curve.
    min_rise : float
        For ``method="logistic"``: the least rise in backdoor accuracy that counts as a curve.

    Returns
    -------
    float
        The resistance point, in the units of ``x``, or NaN.

    Raises
    ------
    ValueError
        For an unknown ``method`` or ``point``, a negative ``min_rise``, ``x`` and
        ``backdoor_acc`` of different lengths, an ``x`` below 0 or infinite, or an accuracy
        outside ``[0, 1]``.

    Notes
    -----
    The logistic method (after Mithridates, Bagdasaryan & Shmatikov, CCS 2024; see the module
    docstring):

    1. Pairs with a NaN are dropped. Repeated x (seeds) are all kept: the fit weighs each run
       equally.
    2. The curve is smoothed by a least-squares fit of a logistic in log x,
       ``acc(x) = low + (high - low) / (1 + exp(-k (log x - c)))`` with ``0 <= low, high <= 1``,
       ``k > 0``; a point at x = 0 counts as ``acc = low`` (the limit as x -> 0). For each
       (c, k), ``low`` and ``high`` are solved exactly (a box-constrained linear least squares);
       (c, log k) start from a grid: c in [log x_min - s, log x_max + s] in steps of g / 4
       (61 to 401 values), log k on 61 values for k in [0.25 / s, 50 / g] (x_min, x_max: the
       smallest and largest positive x, s = log(x_max / x_min), g = the smallest gap between
       distinct log x; k spans near-linear to a step between two neighbouring x). The 6 best
       grid points are refined by bounded least squares in (low, high, c, log k) within those
       bounds (SciPy's ``least_squares``); the fit with the least loss is used.
    3. ``point="knee"`` (default) returns ``exp(c - ln(2 + sqrt 3) / k)``: where the fitted
       curve's second derivative in log x is largest, i.e. where its growth turns from flat to
       steep (the curve has risen (3 - sqrt 3) / 6 = 21% of the way from ``low`` to ``high``):
       the least x that makes the backdoor take hold. ``point="inflection"`` returns
       ``exp(c)``, the midpoint where growth stops accelerating (what the Mithridates code calls
       the "inflection point", here of the fitted curve).

    Everything happens in log x, whose grid and bounds follow the data, so the result is
    scale-equivariant: x in percent gives 100 times the result for x as a fraction.

    NaN when there are fewer than 3 distinct x or fewer than 2 positive ones; when the curve is
    flat or falls (data range or fitted rise ``high - low`` below ``min_rise``); and when the
    point lies outside the positive x that were run (e.g. the backdoor is already learned at
    the smallest x): the sweep cannot place it.

    A step between two neighbouring x gives about their geometric mean. On a noisy step any
    steep enough logistic in the gap fits about equally well, and the point is determined only
    to within the gap (on Mithridates' published MNIST curve, a jump between 0.2% and 0.233%,
    the knee moves by up to 1e-3 relative with the order of the runs). The result does not
    change when points on the flat floor far below the rise are added, and it moves up when
    the curve moves to larger x.
    """
    if method not in RESISTANCE_METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(RESISTANCE_METHODS)}")
    if point not in ("knee", "inflection"):
        raise ValueError(f"point={point!r} must be 'knee' or 'inflection'")
    if min_rise < 0:
        raise ValueError(f"min_rise={min_rise} must be >= 0")
    if method != "logistic":
        return mithridates_point(x, backdoor_acc, simplified=method == "mithridates-simple")
    f, y = _validated(x, backdoor_acc)
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


#: Mithridates' smoothing: a Gaussian filter of width 2, in samples (not in units of x).
_MITHRIDATES_SIGMA = 2.0
#: The raw backdoor accuracies a Mithridates inflection point may have: (15%, 90%), strictly.
_MITHRIDATES_WINDOW = (0.15, 0.90)
#: The simplified variant's threshold: the first x with backdoor accuracy above 50% (strictly).
_MITHRIDATES_SIMPLE = 0.5


def mithridates_point(x: ArrayLike, backdoor_acc: ArrayLike, *, simplified: bool = False) -> float:
    """Mithridates' own resistance point of a poisoning curve: the "inflection point" their
    code computes (Bagdasaryan & Shmatikov, "Mithridates: Auditing and Boosting Backdoor
    Resistance of Machine Learning Pipelines", ACM CCS 2024; github.com/ebagdasa/mithridates,
    ``mithridates/utils.py``, ``get_inflection_point``).

    Parameters
    ----------
    x : array_like
        The amount of poisoning of each run, in any units; finite and ``>= 0``. They use the
        poison ratio in percent of the dataset.
    backdoor_acc : array_like
        Each run's backdoor accuracy, a fraction in ``[0, 1]`` (theirs are in percent, so
        their thresholds 15, 90 and 50 are 0.15, 0.90 and 0.5 here). Pairs holding a NaN are
        dropped.
    simplified : bool
        Their ``simplified=True``: the first x (in increasing order) whose backdoor accuracy is
        above 0.5, strictly.

    Returns
    -------
    float
        An x that was run, or NaN.

    Notes
    -----
    The full variant sorts the curve by x (the x values themselves play no further part: every
    step below is in sample-index units), smooths the accuracies with
    ``scipy.ndimage.gaussian_filter1d`` of sigma 2 samples (mode ``"reflect"``), takes the
    second difference ``np.gradient(np.gradient(smooth))``, and finds the sign changes: the
    indices ``i`` with ``sign(d2[i]) != sign(d2[i + 1])`` (``np.sign``, so a zero is a sign of
    its own), ``i`` being the sample before the change. It returns the x of the first such
    ``i`` whose raw (unsmoothed) accuracy lies strictly between 0.15 and 0.90. Runs at x = 0
    (no attack, as plots join them to every curve) are samples like any other.

    Deviations from their code:

    - Repeated x (several seeds) are averaged per distinct x first; their tuning trials have
      one run per poison ratio, and a filter in sample-index units would otherwise treat the
      seeds of one x as neighbouring points of the curve.
    - Where their code fails or answers something the curve does not say, this returns NaN:
      no sign change with an accuracy in (0.15, 0.90) (theirs raises ``IndexError``); the
      simplified variant with no accuracy above 0.5 (theirs returns the first ratio, as
      ``np.argmax`` of all-False is 0); no pairs left after dropping NaN.
    - The full variant needs at least 3 distinct x: with one, ``np.gradient`` fails; with two,
      its one-sided differences make the second difference identically zero, so no sign
      change can show.
    """
    f, y = _validated(x, backdoor_acc)
    if f.size == 0:
        return math.nan
    distinct, which = np.unique(f, return_inverse=True)  # sorted by x
    mean = np.bincount(which, weights=y) / np.bincount(which)
    if simplified:
        above = np.flatnonzero(mean > _MITHRIDATES_SIMPLE)
        return float(distinct[above[0]]) if above.size else math.nan
    if distinct.size < 3:
        return math.nan
    smooth = gaussian_filter1d(mean, _MITHRIDATES_SIGMA, mode="reflect")
    second = np.gradient(np.gradient(smooth))
    changes = np.flatnonzero(np.diff(np.sign(second)))
    low, high = _MITHRIDATES_WINDOW
    kept = changes[(mean[changes] > low) & (mean[changes] < high)]
    return float(distinct[kept[0]]) if kept.size else math.nan
