"""STRIP: flag inputs whose prediction a strong perturbation cannot change.

Gao et al. [1]_ superimpose an incoming input with ``N`` clean images drawn from held-out data
and feed the blends to the model. A clean input loses its identity in the blend, so the
predicted classes vary and the mean Shannon entropy of the softmax outputs is high; an input
carrying the trigger of an input-agnostic backdoor keeps steering every blend to the target
class, and its entropy is low. Inputs whose entropy falls below a detection boundary, chosen
from clean inputs alone for a preset false-rejection rate (FRR), are rejected as trojaned. Here
STRIP is a detector: the model is unchanged (``Outcome.model`` is None), and the report is the
boundary, the FRR realised on clean held-out inputs and the false-acceptance rate (FAR) on the
backdoor test's triggered inputs (which decide nothing).

What was compared, and where this module deviates
-------------------------------------------------
Compared with the paper and the authors' notebook (github ``garrisongys/STRIP``,
``STRIP_CIFAR10DeepArchit_Tb.ipynb``):

* Blend. The paper (footnote 2) and the notebook superimpose with
  ``cv2.addWeighted(background, 1, overlay, 1, 0)``: the plain sum of the two images. The
  notebook's images are float32 in [0, 1], and for float images OpenCV does not saturate (we
  checked: ``addWeighted`` of 0.8 and 0.7 gives 1.5 on float32 and 255 on uint8), so their
  blends range over [0, 2]. :func:`superimpose` clamps the sum to [0, 1] by default
  (``saturate=True``): an 8-bit image pipeline would do the same, and the blend stays a valid
  input for our models, which take pixels in [0, 1] and normalise inside.
  ``saturate=False`` gives the notebook's unclamped sum.
* Entropy. This is the paper's Eq. 2-4: the entropy of each perturbed copy in bits (log base 2,
  as the notebook's ``np.log2``), averaged over the ``n`` copies. A class of probability 0
  adds 0, like the notebook's ``np.nansum``. The boundary is set on the same scale, so the
  base only scales the reported entropies and threshold.
* Overlays. Drawn uniformly with replacement (the notebook's ``np.random.randint``) from an
  overlay pool disjoint from the inputs being tested: the notebook draws them from training
  images 40000-49998 and tests images 26000-27999 (clean) and 14000-15999 (trojaned).
* Boundary. The paper fits a normal distribution to the clean inputs' entropies and takes its
  ``frr`` percentile (the notebook: ``scipy.stats.norm.fit``, then ``norm.ppf(0.01)``). That is
  ``boundary="normal"`` here. The default, ``boundary="quantile"``, is the empirical ``frr``
  quantile of the calibration inputs' entropies. It makes no assumption about the
  distribution's shape. The paper itself reports clean entropies far from normal under its
  adaptive (entropy-manipulation) attack (Fig. 13), and a normal boundary that turns negative
  for a small FRR (Table 3, note 1). As in the paper, an input whose entropy is below the
  boundary is rejected as trojaned, and one at or above it is accepted. The notebook's FAR
  counts trojaned entropies strictly above the boundary; the two differ only for an entropy
  exactly at the boundary.
* Data split. The paper calibrates on clean held-out inputs and draws overlays from held-out
  data. Here the server's clean set ``data.x`` is split at random (``calibration`` share)
  into calibration inputs and an overlay pool, disjoint, so no input is blended with itself.
  The FRR is measured on the clean held-out test inputs, not on the inputs that set the
  boundary (the notebook fits the boundary on the same clean entropies whose FRR it presets),
  and the FAR on the triggered ones, with overlays from the same pool. At most ``test_size``
  of each are used (the paper tests 2000 clean and 2000 trojaned inputs).
* N. The paper evaluates with ``N = 100`` and reports that ``N = 10`` suffices (§5.4, GTSRB,
  chosen from where the standard deviation of the clean entropies stops changing). The default
  here is ``n = 10``, which keeps STRIP on a SmallCNN within seconds on a 2-core CPU (see
  :func:`strip`).
* Non-finite outputs. A perturbed copy whose logits hold a NaN or an infinity has entropy NaN,
  and so has the mean over the copies. Such an input is never accepted: it counts as rejected
  in the FRR and as not accepted in the FAR, and in the quantile boundary it ranks below every
  finite entropy. The share of such inputs is reported as ``nonfinite``.

References
----------
.. [1] Y. Gao, C. Xu, D. Wang, S. Chen, D. C. Ranasinghe and S. Nepal, "STRIP: A Defence
   Against Trojan Attacks on Deep Neural Networks", ACSAC 2019, pp. 113-125.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fedbackdoor.posttrain import Outcome, ServerData

__all__ = ["accepted", "detection_boundary", "strip", "strip_entropy", "superimpose"]

_BOUNDARIES = ("quantile", "normal")


def superimpose(x: Tensor, overlays: Tensor, *, saturate: bool = True) -> Tensor:
    """The blend of STRIP: ``x + overlays`` (``cv2.addWeighted(x, 1, overlay, 1, 0)``),
    clamped to [0, 1] unless ``saturate`` is False. Broadcasts like ``+``."""
    blend = x + overlays
    return blend.clamp_(0.0, 1.0) if saturate else blend


def _entropy_bits(logits: Tensor) -> Tensor:
    """Shannon entropy (bits) of each row's softmax; NaN for a row with a non-finite logit."""
    logits = logits.double()
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * log_p, torch.zeros_like(p))
    entropy = -terms.sum(dim=1) / math.log(2.0)
    return torch.where(torch.isfinite(logits).all(dim=1), entropy, torch.nan)


@torch.no_grad()
def strip_entropy(
    model: nn.Module,
    x: Tensor,
    pool: Tensor,
    *,
    n: int,
    generator: torch.Generator,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    saturate: bool = True,
) -> Tensor:
    """STRIP's entropy of each input: the mean, over ``n`` blends with overlays drawn from
    ``pool``, of the entropy (bits) of the model's softmax (Gao et al. [1]_, Eq. 2-4).

    The overlay indices of all inputs are drawn first, ``[len(x), n]`` uniformly with
    replacement from ``generator``, so the result does not depend on ``batch_size``. The
    ``len(x) * n`` blends are then evaluated in batches of about ``batch_size``.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode (moved to ``device``), without gradients.
    x : Tensor
        Inputs ``[m, C, H, W]`` in [0, 1].
    pool : Tensor
        Clean overlay images ``[p, C, H, W]`` (p >= 1).
    n : int
        Blends per input (>= 1).
    generator : torch.Generator
        CPU generator for the overlay draws.
    batch_size : int
        Blended images per forward pass (at least ``n``: whole inputs go in a batch).
    device : torch.device or str
        Where to compute.
    saturate : bool
        Clamp the blends to [0, 1] (see :func:`superimpose`).

    Returns
    -------
    Tensor
        ``[m]`` float64 on the CPU; NaN where a blend's logits were not all finite.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an int >= 1 (blends per input)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    if int(pool.shape[0]) == 0:
        raise ValueError("the overlay pool is empty")
    if tuple(x.shape[1:]) != tuple(pool.shape[1:]):
        raise ValueError(
            f"inputs {tuple(x.shape[1:])} and overlays {tuple(pool.shape[1:])} differ in shape"
        )
    m = int(x.shape[0])
    picks = torch.randint(int(pool.shape[0]), (m, n), generator=generator)
    entropy = torch.empty(m, dtype=torch.float64)
    model.to(device).eval()
    pool = pool.to(device)
    per_batch = max(1, batch_size // n)
    for start in range(0, m, per_batch):
        rows = slice(start, start + per_batch)
        xb = x[rows].to(device)
        blends = superimpose(xb.unsqueeze(1), pool[picks[rows].to(device)], saturate=saturate)
        logits = model(blends.flatten(0, 1))
        entropy[rows] = _entropy_bits(logits).view(-1, n).mean(dim=1).cpu()
    return entropy


def detection_boundary(entropy: Tensor, frr: float, *, rule: str = "quantile") -> float:
    """The entropy below which an input is rejected, for a false-rejection rate ``frr`` on the
    clean calibration entropies ``entropy``.

    ``rule="quantile"``: the empirical ``frr`` quantile with linear interpolation between
    order statistics (``torch.quantile``'s default), NaN entropies ranking lowest (so a
    boundary that falls among them is -inf: only the NaN inputs are rejected).
    ``rule="normal"``: Gao et al.'s rule, the ``frr`` percentile of a normal distribution fitted
    to the finite entropies (mean and maximum-likelihood standard deviation, as
    ``scipy.stats.norm.fit``); NaN when fewer than two are finite.
    """
    if not (0.0 < frr < 1.0):
        raise ValueError(f"frr={frr!r} must be in (0, 1)")
    if rule not in _BOUNDARIES:
        raise ValueError(f"boundary={rule!r} must be one of {', '.join(_BOUNDARIES)}")
    values = entropy.double().flatten()
    if values.numel() == 0:
        raise ValueError("the detection boundary needs at least one calibration entropy")
    if rule == "normal":
        finite = values[torch.isfinite(values)]
        if finite.numel() < 2:
            return math.nan
        mean, std = float(finite.mean()), float(finite.std(correction=0))
        if std == 0.0:
            return mean
        return statistics.NormalDist(mean, std).inv_cdf(frr)
    ranked = torch.where(torch.isnan(values), -math.inf, values).sort().values
    position = frr * (ranked.numel() - 1)
    low, high = math.floor(position), math.ceil(position)
    lower, upper = float(ranked[low]), float(ranked[high])
    if lower == -math.inf:
        return -math.inf
    return lower + (position - low) * (upper - lower)


def accepted(entropy: Tensor, boundary: float) -> Tensor:
    """Inputs STRIP lets through: entropy at or above the boundary (NaN never is)."""
    return entropy >= boundary


def strip(
    model: nn.Module,
    data: ServerData,
    *,
    generator: torch.Generator,
    device: torch.device | str,
    earlier: Mapping[str, Outcome],
    n: int = 10,
    frr: float = 0.01,
    calibration: float = 0.5,
    boundary: str = "quantile",
    test_size: int | None = 2000,
    batch_size: int = 256,
    saturate: bool = True,
) -> Outcome:
    """STRIP (Gao et al. [1]_), a detector; a :class:`~fedbackdoor.posttrain.PostTrainDefense`.

    Splits ``data.x`` at random into calibration inputs (a ``calibration`` share) and the
    overlay pool (the rest), sets the boundary from the calibration inputs' entropies for the
    target ``frr`` (:func:`detection_boundary`), then measures on the held-out test inputs.
    The realised FRR is the share of clean inputs rejected. The FAR is the share of triggered
    inputs accepted; it is NaN when the attack has no trigger (no triggered inputs).

    Parameters
    ----------
    model : nn.Module
        The checkpoint's global model (not changed).
    data : ServerData
        ``data.x`` for calibration and overlays; ``data.x_test_clean`` and
        ``data.x_test_triggered`` only for the report.
    generator : torch.Generator
        The split, the test subsample and every overlay draw.
    device : torch.device or str
        Where to compute.
    earlier : mapping of str to Outcome
        Not used.
    n : int
        Blends per input. The paper evaluates with 100 and finds 10 sufficient; 10 keeps
        2000 + 2000 test inputs on a SmallCNN within seconds on 2 CPU cores (cost is linear
        in ``n``).
    frr : float
        Target false-rejection rate in (0, 1); the paper presets 1 %.
    calibration : float
        Share of ``data.x`` used as calibration inputs (the rest are overlays), in (0, 1);
        each part must hold at least one sample.
    boundary : {"quantile", "normal"}
        The empirical quantile (default) or the paper's normal fit.
    test_size : int or None
        Test at most this many clean and this many triggered inputs (a random subset drawn
        from ``generator``); None tests all.
    batch_size : int
        Blended images per forward pass.
    saturate : bool
        Clamp blends to [0, 1] (default) or sum them unclamped as the authors' float code did.

    Returns
    -------
    Outcome
        ``model=None``; ``fields``: ``threshold`` (the boundary, bits), ``frr_target``,
        ``frr``, ``far``, ``entropy_clean_mean``, ``entropy_triggered_mean`` (mean of the
        finite entropies of the tested clean and triggered inputs; NaN if none),
        ``nonfinite`` (share of the calibration and tested inputs with entropy NaN).
    """
    if not (0.0 < frr < 1.0):
        raise ValueError(f"frr={frr!r} must be in (0, 1)")
    if not (0.0 < calibration < 1.0):
        raise ValueError(f"calibration={calibration!r} must be in (0, 1)")
    if boundary not in _BOUNDARIES:
        raise ValueError(f"boundary={boundary!r} must be one of {', '.join(_BOUNDARIES)}")
    if test_size is not None and (
        isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 1
    ):
        raise ValueError(f"test_size={test_size!r} must be an int >= 1 or None")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an int >= 1 (blends per input)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    size = int(data.x.shape[0])
    n_calibration = round(calibration * size)
    if not (1 <= n_calibration < size):
        raise ValueError(
            f"calibration={calibration} of {size} server samples leaves {n_calibration} "
            f"calibration inputs and {size - n_calibration} overlays; each needs at least one"
        )
    order = torch.randperm(size, generator=generator)
    calibration_x = data.x[order[:n_calibration]]
    pool = data.x[order[n_calibration:]]
    clean_x = _subsample(data.x_test_clean, test_size, generator)
    triggered_x = _subsample(data.x_test_triggered, test_size, generator)

    def entropy_of(inputs: Tensor) -> Tensor:
        return strip_entropy(
            model, inputs, pool,
            n=n, generator=generator, batch_size=batch_size, device=device, saturate=saturate,
        )  # fmt: skip

    calibration_h = entropy_of(calibration_x)
    clean_h = entropy_of(clean_x)
    triggered_h = entropy_of(triggered_x)
    threshold = detection_boundary(calibration_h, frr, rule=boundary)
    every = torch.cat([calibration_h, clean_h, triggered_h])
    return Outcome(
        model=None,
        fields={
            "threshold": threshold,
            "frr_target": frr,
            "frr": _share(~accepted(clean_h, threshold)),
            "far": _share(accepted(triggered_h, threshold)),
            "entropy_clean_mean": _finite_mean(clean_h),
            "entropy_triggered_mean": _finite_mean(triggered_h),
            "nonfinite": _share(torch.isnan(every)),
        },
    )


def _subsample(x: Tensor, size: int | None, generator: torch.Generator) -> Tensor:
    if size is None or int(x.shape[0]) <= size:
        return x
    return x[torch.randperm(int(x.shape[0]), generator=generator)[:size]]


def _share(mask: Tensor) -> float:
    return float(mask.double().mean()) if mask.numel() else math.nan


def _finite_mean(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else math.nan
