"""Neural Cleanse: reverse-engineer a trigger for every label, flag the labels whose trigger is
abnormally small, and optionally unlearn the recovered triggers.

For every label ``t`` an input-space trigger -- a mask ``m`` (``[H, W]``, one value per pixel,
shared by the channels) and a pattern ``p`` (``[C, H, W]``), both in ``[0, 1]`` -- is optimised so
that ``(1 - m) * x + m * p`` is classified as ``t`` while ``||m||_1`` stays small. A backdoor's
target needs a far smaller mask than a clean label; the median-absolute-deviation (MAD) outlier
test on the labels' mask norms finds it. Unlearning fine-tunes the model on clean samples, part
of them stamped with a flagged label's recovered trigger but keeping their true labels.

What was compared
-----------------
* The authors' code (github.com/bolunwang/backdoor: ``visualizer.py``, the parameters of
  ``gtsrb_visualize_example.py`` and ``mad_outlier_detection.py``): the tanh parametrisation, the
  random initialisation, Adam with betas ``(0.5, 0.9)``, the loss ``CE + cost * ||m||_1``, the
  dynamic cost schedule (the cost starts at 0, is set to ``init_cost`` after ``patience``
  successful checks, then multiplied by ``cost_multiplier`` after ``patience`` successful checks
  in a row and divided by ``cost_multiplier ** 1.5`` after ``patience`` failed ones), the early
  stop (no 1 % improvement of the best norm for ``early_stop_patience`` checks, once the cost
  went both up and down), keeping the smallest-norm mask that reached the success threshold,
  and the MAD test (``np.median``, constant 1.4826, index > 2 for labels below the median).
* ART's ``KerasNeuralCleanse`` (adversarial-robustness-toolbox,
  ``art/estimators/poison_mitigation/neural_cleanse/``): the same defaults (``patience=5``,
  ``cost_multiplier=1.5``, ``early_stop_threshold=0.99``, ``early_stop_patience=10``). ART
  departs from the authors where we follow the authors: its cost starts at ``init_cost`` and is
  reset to it after every ``patience`` successes (its reset lacks the authors' ``cost == 0``
  test), so its cost never rises; its mask has one value per pixel *and channel*; its unlearning
  trains on triggered samples of the flagged class only.

Deviations (forced by a CPU budget or chosen for exactness)
---------------------------------------------------------
* **Steps, not epochs.** The authors run up to 1000 "steps" of ``NB_SAMPLE / BATCH_SIZE``
  mini-batches each (about 31 000 optimiser steps per label; with early stopping) and check the
  schedule once per such epoch on the epoch's average success. Here ``steps`` counts optimiser
  steps (default :data:`DEFAULT_STEPS`, which keeps the whole defense on 10 labels of the
  SmallCNN with 1000 samples near 10 s on two CPU cores: 12.3 s, 9.6 % of the default
  study's run, measured by ``simulations/bench_defense_stages.py``) and a check comes every
  ``check_every`` mini-batches (default :data:`DEFAULT_CHECK_EVERY`, 128 samples), on their
  average success. Measured on a backdoored Fashion-MNIST SmallCNN: a check after every
  32-sample batch (where 0.99 means 32 of 32) accepted masks that sent only 95-97 % of all
  samples to the label; four batches keep it at 98-99 %. With 150 steps the norms are larger
  than after 1000 (the backdoor's target ~2x, clean labels ~1.5x); the backdoor was flagged in
  every run, but a clean model's easiest label was flagged in one of two seeds where 1000
  steps flag nothing. More ``steps`` buy fidelity at a linear cost in time.
* **Batches.** Every batch has ``batch_size`` samples (the remainder of each shuffled pass is
  dropped, so a tiny last batch never decides a check); with fewer samples than
  ``batch_size``, every step uses all of them.
* **The target's own samples are left out** of label ``t``'s optimisation and of its reported
  success (the authors feed all samples): they are classified as ``t`` already and would only
  pad the success rate.
* **The recorded candidate** at a check is the mask and pattern the check's last batch was
  classified with (the authors save the mask after the epoch's updates, beside the epoch's
  average norm); its norm is its own ``||m||_1``.
* **Parametrisation.** ``m = (tanh(w) + 1) / 2``: the authors divide ``tanh(w)`` by
  ``2 - eps`` (``eps`` = Keras' 1e-7), which lets values reach ``1 + 3e-8``; the ``eps`` is kept
  where it matters, in the inverse that maps the random initial values to ``w``.
* **Success reported** for the returned trigger is measured again on all the label's samples
  (not the batch average the authors log).
* **Unlearning** (the paper's Sec. VI-C) fine-tunes on the server's clean samples (the paper:
  10 % of the training set) for one epoch with 20 % of them stamped; learning rate and batch
  size are ours.

References
----------
.. [1] B. Wang, Y. Yao, S. Shan, H. Li, B. Viswanath, H. Zheng and B. Y. Zhao, "Neural Cleanse:
   Identifying and Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedbackdoor.attacks.triggers import Trigger
from fedbackdoor.posttrain import Outcome, ServerData
from fedbackdoor.training import TrainResult, evaluate, train

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CHECK_EVERY",
    "DEFAULT_STEPS",
    "MAD_CONSISTENCY",
    "NeuralCleanseResult",
    "CostSchedule",
    "ReversedTrigger",
    "anomaly_index",
    "flag_labels",
    "median",
    "neural_cleanse",
    "recover_triggers",
    "reverse_engineer",
    "unlearn_triggers",
]

#: Optimiser steps per label (the authors run up to 1000 epochs of ~31 steps each; see the
#: module's deviations). With :data:`DEFAULT_BATCH_SIZE` this keeps 10 labels of the SmallCNN
#: with 1000 samples near 10 s on two CPU cores (48 000 forward-backward passes of one image).
DEFAULT_STEPS = 150
#: Samples per optimiser step, the authors' ``BATCH_SIZE``.
DEFAULT_BATCH_SIZE = 32
#: Mini-batches per check of the cost schedule and of the best mask (the authors: an epoch,
#: ~31 batches); 4 x 32 samples make "success >= 0.99" mean at most one miss in 128.
DEFAULT_CHECK_EVERY = 4
#: Scales the MAD to the standard deviation of a normal distribution (the authors' constant).
MAD_CONSISTENCY = 1.4826
# Keras' epsilon, as the authors use it to keep arctanh finite at the initial values' edges.
_TANH_EPS = 1e-7


@dataclass(frozen=True, eq=False)
class ReversedTrigger:
    """The trigger recovered for one label.

    Attributes
    ----------
    target : int
        The label the trigger was optimised for.
    mask : Tensor
        ``[H, W]`` in ``[0, 1]`` (CPU, float32).
    pattern : Tensor
        ``[C, H, W]`` in ``[0, 1]`` (CPU, float32).
    l1 : float
        ``mask.sum()``, the mask's L1 norm (the quantity the outlier test compares).
    success : float
        Share of the samples not of ``target`` that the trigger sends to ``target``, measured
        on all of them with the returned trigger.
    reached : bool
        Whether any check reached the success threshold; if not, the last mask and pattern are
        returned (as the authors do) and ``success`` says how far they got.
    steps : int
        Optimiser steps taken (fewer than asked after an early stop).
    """

    target: int
    mask: Tensor
    pattern: Tensor
    l1: float
    success: float
    reached: bool
    steps: int

    def as_trigger(self) -> Trigger:
        """This mask and pattern as a :class:`~fedbackdoor.attacks.triggers.Trigger`."""
        return Trigger(mask=self.mask, pattern=self.pattern)


@dataclass(frozen=True, eq=False)
class NeuralCleanseResult:
    """The triggers recovered for every label and the outlier test on their norms.

    Attributes
    ----------
    masks : Tensor
        ``[K, H, W]``, label ``k``'s mask in row ``k``.
    patterns : Tensor
        ``[K, C, H, W]``.
    norms : Tensor
        ``[K]`` float64, the masks' L1 norms.
    success : Tensor
        ``[K]`` float64, each trigger's attack success (see :class:`ReversedTrigger`).
    indices : Tensor
        ``[K]`` float64, :func:`anomaly_index` of the norms.
    flagged : list of int
        Labels flagged by :func:`flag_labels`, ascending.
    triggers : list of ReversedTrigger
        The per-label results, in label order.
    """

    masks: Tensor
    patterns: Tensor
    norms: Tensor
    success: Tensor
    indices: Tensor
    flagged: list[int]
    triggers: list[ReversedTrigger]

    @property
    def anomaly_index(self) -> float:
        """The anomaly index of the label with the smallest norm, the number the authors
        report (``min_mad`` in ``mad_outlier_detection.py``): the strongest evidence for a
        small trigger. Labels above the median never count, and the smallest norm is never
        above it."""
        return float(self.indices[int(torch.argmin(self.norms))])


# --- the outlier test -------------------------------------------------------------------------


def median(values: Tensor) -> Tensor:
    """The median as ``np.median`` defines it: the middle value, or the mean of the two middle
    values for an even count (``torch.median`` returns the lower of the two).

    Parameters
    ----------
    values : Tensor
        1-D, non-empty.

    Returns
    -------
    Tensor
        A 0-d tensor of ``values``' dtype.
    """
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D tensor, got shape {tuple(values.shape)}")
    ordered = torch.sort(values).values
    n = ordered.numel()
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def anomaly_index(norms: Tensor) -> Tensor:
    """The MAD outlier score of every label's mask norm.

    ``index_k = |norm_k - med| / (1.4826 * MAD)`` with ``med = median(norms)`` and
    ``MAD = median(|norms - med|)``, both medians as :func:`median` (``np.median``) defines them,
    as in the authors' ``mad_outlier_detection.py`` [1]_. Computed in float64.

    Parameters
    ----------
    norms : Tensor
        ``[K]`` finite mask norms, ``K >= 1``.

    Returns
    -------
    Tensor
        ``[K]`` float64 indices. Where the MAD is 0 (more than half the norms equal the median),
        a norm equal to the median gets 0 and any other ``inf`` (the limit of the formula; the
        authors' numpy code would give ``nan`` and ``inf``).
    """
    if norms.dim() != 1 or norms.numel() == 0:
        raise ValueError(f"norms must be a non-empty 1-D tensor, got shape {tuple(norms.shape)}")
    values = norms.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"norms must be finite, got {values.tolist()}")
    deviation = (values - median(values)).abs()
    scale = MAD_CONSISTENCY * median(deviation)
    if float(scale) == 0.0:
        return torch.where(deviation == 0, 0.0, math.inf).to(torch.float64)
    return deviation / scale


def flag_labels(norms: Tensor, *, threshold: float = 2.0) -> list[int]:
    """Labels whose norm is an outlier on the small side: anomaly index above ``threshold`` and
    norm below the median (a large trigger is no evidence of a backdoor) [1]_.

    Parameters
    ----------
    norms : Tensor
        ``[K]`` mask norms, label ``k``'s at position ``k``.
    threshold : float
        The authors' 2 (a normal variable's index exceeds 2 with probability ~5 %).

    Returns
    -------
    list of int
        Flagged labels, ascending.
    """
    if not threshold > 0:
        raise ValueError(f"threshold={threshold} must be positive")
    indices = anomaly_index(norms)
    values = norms.detach().to(device="cpu", dtype=torch.float64)
    below = values < median(values)
    return [int(k) for k in torch.nonzero(below & (indices > threshold)).flatten()]


# --- reverse engineering ----------------------------------------------------------------------


def _check_settings(
    *,
    steps: int,
    batch_size: int,
    check_every: int,
    lr: float,
    init_cost: float,
    attack_success_threshold: float,
    patience: int,
    cost_multiplier: float,
    early_stop_threshold: float,
    early_stop_patience: int,
) -> None:
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("check_every", check_every),
        ("patience", patience),
        ("early_stop_patience", early_stop_patience),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr} must be positive and finite")
    if not (math.isfinite(init_cost) and init_cost > 0):
        raise ValueError(f"init_cost={init_cost} must be positive and finite")
    if not 0 < attack_success_threshold <= 1:
        raise ValueError(f"attack_success_threshold={attack_success_threshold} must be in (0, 1]")
    if not (math.isfinite(cost_multiplier) and cost_multiplier > 1):
        raise ValueError(f"cost_multiplier={cost_multiplier} must be > 1")
    if not 0 < early_stop_threshold <= 1:
        raise ValueError(f"early_stop_threshold={early_stop_threshold} must be in (0, 1]")


def _check_data(x: Tensor, y: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be [N] with N={x.shape[0]}, got shape {tuple(y.shape)}")


def _to_unit(w: Tensor) -> Tensor:
    """The authors' tanh parametrisation onto ``[0, 1]`` (without their ``2 - eps``, which
    overshoots 1 by 3e-8)."""
    return (torch.tanh(w) + 1) / 2


def _from_uniform(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    # The authors' initialisation: uniform values in [0, 1), mapped to tanh space with
    # arctanh((v - 0.5) * (2 - eps)); in float64, so v = 0 stays finite.
    v = torch.rand(*shape, generator=generator, dtype=torch.float64)
    return torch.atanh((v - 0.5) * (2 - _TANH_EPS)).to(torch.float32)


def _full_batches(n: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """One shuffled pass as ``[batches, batch_size]`` indices (the remainder dropped); all
    ``n`` samples in one batch when ``n < batch_size``."""
    order = torch.randperm(n, generator=generator)
    size = min(batch_size, n)
    return order[: (n // size) * size].view(-1, size)


class CostSchedule:
    """The authors' dynamic weight of the mask norm in the loss (``visualizer.py`` [1]_).

    :meth:`check` is called once per check (the authors: once per epoch) with whether the
    attack success reached the threshold and the best norm so far:

    * while the cost is 0 (it starts there with ``reset_cost_to_zero``), ``patience``
      successful checks in a row set it to ``init_cost`` and clear the counters and flags;
    * ``patience`` successful checks in a row multiply it by ``cost_multiplier``,
      ``patience`` failed ones divide it by ``cost_multiplier ** 1.5`` (a counter restarts
      after each change; a check counts for one direction only);
    * with ``early_stop``, a check whose best norm is not below ``early_stop_threshold``
      times the best before it counts towards a stop (any improvement beyond that restarts
      the count; nothing counts before a first success), and :meth:`check` returns True once
      ``early_stop_patience`` such checks came in a row and the cost has gone both up and
      down since it was last set.

    The order of the tests within a check is the authors': early stop first, then the reset
    from 0, then the change up or down. ART's ``KerasNeuralCleanse`` drops the ``cost == 0``
    test, so its cost returns to ``init_cost`` every ``patience`` successes and never rises;
    we follow the authors.
    """

    def __init__(
        self,
        *,
        init_cost: float,
        patience: int,
        cost_multiplier: float,
        reset_cost_to_zero: bool = True,
        early_stop: bool = False,
        early_stop_threshold: float = 0.99,
        early_stop_patience: int = 10,
    ) -> None:
        self.init_cost = init_cost
        self.patience = patience
        self.up = cost_multiplier
        self.down = cost_multiplier**1.5
        self.early_stop = early_stop
        self.early_stop_threshold = early_stop_threshold
        self.early_stop_patience = early_stop_patience
        self.cost = 0.0 if reset_cost_to_zero else init_cost
        self.went_up = self.went_down = False
        self._set = self._up = self._down = self._stale = 0
        self._early_stop_best = math.inf

    def check(self, hit: bool, best_norm: float) -> bool:
        """Update the cost after a check; True when the run should stop early."""
        if self.early_stop:
            if best_norm < math.inf:
                if best_norm >= self.early_stop_threshold * self._early_stop_best:
                    self._stale += 1
                else:
                    self._stale = 0
            self._early_stop_best = min(best_norm, self._early_stop_best)
            if self.went_up and self.went_down and self._stale >= self.early_stop_patience:
                return True
        if self.cost == 0 and hit:
            self._set += 1
            if self._set >= self.patience:
                self.cost = self.init_cost
                self._up = self._down = 0
                self.went_up = self.went_down = False
        else:
            self._set = 0
        if hit:
            self._up, self._down = self._up + 1, 0
        else:
            self._up, self._down = 0, self._down + 1
        if self._up >= self.patience:
            self._up = 0
            self.cost *= self.up
            self.went_up = True
        elif self._down >= self.patience:
            self._down = 0
            self.cost /= self.down
            self.went_down = True
        return False


def _working_copy(model: nn.Module, device: torch.device | str) -> nn.Module:
    """A frozen eval-mode copy of ``model`` on ``device`` to optimise triggers through (the
    caller's model is not moved or changed).

    On the CPU the copy's 4-D weights are stored channels-last: measured on the Fashion-MNIST
    SmallCNN with two threads (``simulations/bench_defense_stages.py``), the whole recovery
    takes about 30 % less time; the logits differ from the contiguous layout's only by float
    rounding. GPUs keep the layout the model came in.
    """
    copy = deepcopy(model).to(device).eval()
    copy.requires_grad_(False)
    if torch.device(device).type == "cpu":
        copy = copy.to(memory_format=torch.channels_last)
    return copy


def reverse_engineer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_every: int = DEFAULT_CHECK_EVERY,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    attack_success_threshold: float = 0.99,
    patience: int = 5,
    cost_multiplier: float = 1.5,
    reset_cost_to_zero: bool = True,
    early_stop: bool = True,
    early_stop_threshold: float = 0.99,
    early_stop_patience: int = 10,
    eval_batch_size: int = 256,
) -> ReversedTrigger:
    """Recover the smallest trigger that sends ``x`` to ``target`` (Neural Cleanse [1]_, Sec. IV).

    Minimises ``CE(model((1 - m) * x + m * p), target) + cost * ||m||_1`` over the mask ``m``
    (``[H, W]``, shared by the channels) and the pattern ``p`` (``[C, H, W]``), both through
    ``(tanh(w) + 1) / 2`` so they stay in ``[0, 1]``, the pixel range the model takes (it
    normalises internally). Adam with the authors' betas ``(0.5, 0.9)`` and Keras' epsilon
    1e-7; random uniform initial mask and pattern, as the authors.

    Every ``check_every`` steps (and after the last) the share of those steps' samples sent to
    ``target`` is compared with ``attack_success_threshold``: a successful check records the
    current mask and pattern if the mask's norm is the smallest so far, and the cost follows the
    authors' schedule (:class:`CostSchedule`: from 0 to ``init_cost`` once the attack works,
    then up by ``cost_multiplier`` or down by its 1.5th power after ``patience`` checks the same
    way; an optional early stop). The returned trigger is the smallest recorded one; if no check
    succeeded, the last mask and pattern (as the authors do), with ``reached=False``.

    Deviations from the authors (steps and checks instead of epochs, full batches, the
    target's own samples left out, which mask a check records) are listed, with the reasons,
    in the module docstring.

    Parameters
    ----------
    model : nn.Module
        The classifier; it is not changed or moved: a frozen eval-mode copy runs on
        ``device`` (channels-last on the CPU, see :func:`_working_copy`).
    x, y : Tensor
        Clean samples ``[N, C, H, W]`` in ``[0, 1]`` and their labels ``[N]``; the samples of
        ``target`` are left out.
    target : int
        The label to reverse-engineer a trigger for.
    generator : torch.Generator
        CPU generator for the initial mask and pattern and the batch order; nothing else draws.
    device : torch.device or str
        Where to compute.
    steps : int
        Optimiser steps at most (:data:`DEFAULT_STEPS`; the authors: up to 1000 epochs).
    batch_size : int
        Samples per step (the authors' 32).
    check_every : int
        Steps per check (:data:`DEFAULT_CHECK_EVERY`; the authors: an epoch).
    lr : float
        Adam's learning rate (the authors' 0.1).
    init_cost : float
        The cost the schedule starts from once the threshold is reached (the authors' 1e-3).
    attack_success_threshold : float
        Share of a check's samples that must reach ``target`` for it to succeed (0.99).
    patience : int
        Successful or failed checks in a row before the cost changes (the authors' example and
        ART: 5).
    cost_multiplier : float
        Up factor; the down factor is its 1.5th power (ART and the authors' ``Visualizer``
        default 1.5; their GTSRB example uses 2).
    reset_cost_to_zero : bool
        Start at cost 0 (the authors' default) instead of ``init_cost`` (ART).
    early_stop : bool
        Stop early (:class:`CostSchedule`); with the default ``steps`` it rarely fires.
    early_stop_threshold : float
        A best norm counts as improved when below this share of the best before (0.99).
    early_stop_patience : int
        Checks without improvement before an early stop (ART: 10; the authors: ``2 * patience``
        by default, ``5 * patience`` in their example).
    eval_batch_size : int
        Batch size for measuring the final success.

    Returns
    -------
    ReversedTrigger

    Raises
    ------
    ValueError
        For a bad setting, mismatched ``x``/``y``, no sample outside ``target``, a ``target``
        the model has no output for, or non-finite logits.
    """
    _check_settings(
        steps=steps,
        batch_size=batch_size,
        check_every=check_every,
        lr=lr,
        init_cost=init_cost,
        attack_success_threshold=attack_success_threshold,
        patience=patience,
        cost_multiplier=cost_multiplier,
        early_stop_threshold=early_stop_threshold,
        early_stop_patience=early_stop_patience,
    )
    _check_data(x, y)
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"target={target!r} must be a non-negative int")
    pool = x[(y != target).to(x.device)].to(device)
    n = int(pool.shape[0])
    if n == 0:
        raise ValueError(f"no sample outside target={target} to reverse-engineer a trigger on")
    _, channels, height, width = pool.shape

    mask_w = _from_uniform((height, width), generator).to(device).requires_grad_()
    pattern_w = _from_uniform((channels, height, width), generator).to(device).requires_grad_()
    params = [mask_w, pattern_w]
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9), eps=1e-7)

    schedule = CostSchedule(
        init_cost=init_cost,
        patience=patience,
        cost_multiplier=cost_multiplier,
        reset_cost_to_zero=reset_cost_to_zero,
        early_stop=early_stop,
        early_stop_threshold=early_stop_threshold,
        early_stop_patience=early_stop_patience,
    )
    best: tuple[Tensor, Tensor] | None = None
    best_l1 = math.inf
    window_hits = window_size = 0
    taken = 0

    model = _working_copy(model, device)
    batches = torch.empty(0, 0, dtype=torch.long)
    while taken < steps:
        row = taken % batches.shape[0] if batches.numel() else 0
        if row == 0:
            batches = _full_batches(n, batch_size, generator)
        xb = pool[batches[row].to(device)]
        mask, pattern = _to_unit(mask_w), _to_unit(pattern_w)
        logits = model((1 - mask) * xb + mask * pattern)
        if taken == 0 and not 0 <= target < logits.shape[1]:
            raise ValueError(f"target={target} but the model has {logits.shape[1]} outputs")
        wanted = torch.full((xb.shape[0],), target, dtype=torch.long, device=logits.device)
        l1 = mask.sum()
        loss = F.cross_entropy(logits, wanted) + schedule.cost * l1
        if not bool(torch.isfinite(loss)):
            raise ValueError(f"non-finite loss at step {taken} for target={target}")
        # Only the mask and the pattern are optimised (the copy's parameters are frozen).
        mask_w.grad, pattern_w.grad = torch.autograd.grad(loss, params)
        optimizer.step()
        taken += 1

        window_hits += int((logits.detach().argmax(dim=1) == target).sum())
        window_size += int(xb.shape[0])
        if taken % check_every and taken < steps:
            continue
        # A check, as the authors' once per epoch: the window's success decides; the
        # candidate is the mask and pattern of the window's last batch, before its update.
        hit = window_hits / window_size >= attack_success_threshold
        window_hits = window_size = 0
        l1_value = float(l1.detach())
        if hit and l1_value < best_l1:
            best = (mask.detach().clone(), pattern.detach().clone())
            best_l1 = l1_value
        if schedule.check(hit, best_l1):
            break

    reached = best is not None
    if best is None:
        with torch.no_grad():
            best = (_to_unit(mask_w), _to_unit(pattern_w))
    mask_best, pattern_best = (t.detach().to("cpu", torch.float32) for t in best)
    trigger = Trigger(mask=mask_best, pattern=pattern_best)
    success_all = evaluate(
        model,
        trigger.apply(pool),
        torch.full((n,), target, dtype=torch.long),
        batch_size=eval_batch_size,
        device=device,
    ).accuracy
    return ReversedTrigger(
        target=target,
        mask=trigger.mask,
        pattern=trigger.pattern,
        l1=float(trigger.mask.sum()),
        success=success_all,
        reached=reached,
        steps=taken,
    )


def recover_triggers(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    threshold: float = 2.0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_every: int = DEFAULT_CHECK_EVERY,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    attack_success_threshold: float = 0.99,
    patience: int = 5,
    cost_multiplier: float = 1.5,
    reset_cost_to_zero: bool = True,
    early_stop: bool = True,
    early_stop_threshold: float = 0.99,
    early_stop_patience: int = 10,
) -> NeuralCleanseResult:
    """Run :func:`reverse_engineer` for every label and the outlier test on the norms [1]_.

    Each label draws from its own generator, seeded from ``generator`` before any work, so a
    label's trigger does not depend on how many steps the others took. The other settings are
    :func:`reverse_engineer`'s; ``threshold`` is :func:`flag_labels`'.

    Returns
    -------
    NeuralCleanseResult
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an int >= 2")
    if not threshold > 0:
        raise ValueError(f"threshold={threshold} must be positive")
    seeds = torch.randint(0, 2**62, (num_classes,), generator=generator).tolist()
    found = [
        reverse_engineer(
            model,
            x,
            y,
            label,
            generator=torch.Generator().manual_seed(int(seed)),
            device=device,
            steps=steps,
            batch_size=batch_size,
            check_every=check_every,
            lr=lr,
            init_cost=init_cost,
            attack_success_threshold=attack_success_threshold,
            patience=patience,
            cost_multiplier=cost_multiplier,
            reset_cost_to_zero=reset_cost_to_zero,
            early_stop=early_stop,
            early_stop_threshold=early_stop_threshold,
            early_stop_patience=early_stop_patience,
        )
        for label, seed in enumerate(seeds)
    ]
    norms = torch.tensor([t.l1 for t in found], dtype=torch.float64)
    return NeuralCleanseResult(
        masks=torch.stack([t.mask for t in found]),
        patterns=torch.stack([t.pattern for t in found]),
        norms=norms,
        success=torch.tensor([t.success for t in found], dtype=torch.float64),
        indices=anomaly_index(norms),
        flagged=flag_labels(norms, threshold=threshold),
        triggers=found,
    )


# --- mitigation -------------------------------------------------------------------------------


def unlearn_triggers(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    triggers: Sequence[Trigger],
    *,
    generator: torch.Generator,
    ratio: float = 0.2,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.01,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Fine-tune ``model`` in place to forget ``triggers`` (Neural Cleanse [1]_, Sec. VI-C).

    ``round(ratio * N)`` samples, drawn without replacement, are stamped with a recovered
    trigger and keep their true labels (the paper: 20 % of the clean sample); with several
    triggers they are dealt round-robin, so each trigger gets an equal share. The mixed set is
    trained with :func:`fedbackdoor.training.train` (plain SGD).

    Parameters
    ----------
    model : nn.Module
        Trained in place.
    x, y : Tensor
        Clean samples and their true labels.
    triggers : sequence of Trigger
        At least one.
    generator : torch.Generator
        Chooses the stamped samples, then shuffles the training batches.
    ratio : float
        Share of samples stamped, in ``(0, 1]``.
    epochs, batch_size, lr :
        The fine-tuning (the paper: one epoch).
    device : torch.device or str
        Where to train.

    Returns
    -------
    TrainResult
    """
    _check_data(x, y)
    if not triggers:
        raise ValueError("unlearn needs at least one trigger")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio={ratio} must be in (0, 1]")
    n = int(y.shape[0])
    chosen = torch.randperm(n, generator=generator)[: round(ratio * n)]
    mixed = x.clone()
    for i, trigger in enumerate(triggers):
        part = chosen[i :: len(triggers)]
        mixed[part] = trigger.apply(x[part])
    return train(
        model,
        mixed,
        y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        generator=generator,
        device=device,
    )


def _format(value: float) -> str:
    return f"{value:.6g}"


def neural_cleanse(
    model: nn.Module,
    data: ServerData,
    *,
    generator: torch.Generator,
    device: torch.device | str,
    earlier: Mapping[str, Outcome],
    threshold: float = 2.0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_every: int = DEFAULT_CHECK_EVERY,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    attack_success_threshold: float = 0.99,
    patience: int = 5,
    cost_multiplier: float = 1.5,
    reset_cost_to_zero: bool = True,
    early_stop: bool = True,
    early_stop_threshold: float = 0.99,
    early_stop_patience: int = 10,
    unlearn: bool = False,
    unlearn_epochs: int = 1,
    unlearn_ratio: float = 0.2,
    unlearn_lr: float = 0.01,
    unlearn_batch_size: int = 32,
) -> Outcome:
    """Neural Cleanse [1]_ as a post-training defense (:class:`~fedbackdoor.posttrain.
    PostTrainDefense`): detect on ``data.x, data.y``, optionally unlearn.

    It never looks at the attack's target (the runner compares the flags with it).

    Parameters
    ----------
    model, data, generator, device, earlier :
        As the protocol says; ``earlier`` is not used.
    threshold :
        Anomaly index above which a label below the median is flagged (the authors' 2).
    steps, batch_size, check_every, lr, init_cost, attack_success_threshold, patience, \
cost_multiplier, reset_cost_to_zero, early_stop, early_stop_threshold, early_stop_patience :
        :func:`reverse_engineer`'s. The defaults keep 10 labels of the SmallCNN with 1000
        samples near 10 s on two CPU cores; ``steps`` buys fidelity linearly in time.
    unlearn : bool
        Fine-tune on the server data with the flagged labels' triggers (:func:`unlearn_triggers`).
    unlearn_epochs, unlearn_ratio, unlearn_lr, unlearn_batch_size :
        The fine-tuning: the paper's one epoch with 20 % of the samples stamped; the learning
        rate (0.01) and batch size (32) are ours, not the paper's.

    Returns
    -------
    Outcome
        ``model``: the unlearned model, or ``None`` (detection only, or nothing flagged).
        ``fields``:

        * ``anomaly_index`` -- the index of the label with the smallest norm (the authors'
          reported number; see :attr:`NeuralCleanseResult.anomaly_index`);
        * ``flagged`` -- whether any label was flagged; ``flagged_labels`` -- them, ascending,
          space-separated (``""`` if none);
        * ``mask_l1_min``, ``mask_l1_min_label``, ``mask_l1_median`` -- the smallest norm, its
          label, and the median norm (:func:`median`);
        * ``mask_l1`` and ``attack_success`` -- per label, space-separated in label order
          (6 significant digits); ``attack_success_min`` -- the weakest trigger's success
          (below the threshold, a label's norm is less telling);
        * ``unlearned`` -- whether the model was fine-tuned.

        ``artifacts``: ``masks`` ``[K, H, W]``, ``patterns`` ``[K, C, H, W]``, ``norms``,
        ``success`` and ``anomaly_indices`` ``[K]``, for figures
        (:func:`fedbackdoor.posttrain.figures.plot_recovered_triggers`).

    Raises
    ------
    ValueError
        For a bad setting (before any work), a class without samples of other classes, or a
        model whose logits turn non-finite.
    """
    del earlier  # Neural Cleanse needs no earlier outcome.
    # The unlearning settings are checked before the (long) recovery; the recovery's own are
    # checked by reverse_engineer before its first step.
    for name, value in (
        ("unlearn_epochs", unlearn_epochs),
        ("unlearn_batch_size", unlearn_batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    if not 0 < unlearn_ratio <= 1:
        raise ValueError(f"unlearn_ratio={unlearn_ratio} must be in (0, 1]")
    if not (math.isfinite(unlearn_lr) and unlearn_lr > 0):
        raise ValueError(f"unlearn_lr={unlearn_lr} must be positive and finite")
    if not threshold > 0:
        raise ValueError(f"threshold={threshold} must be positive")
    _check_settings(
        steps=steps,
        batch_size=batch_size,
        check_every=check_every,
        lr=lr,
        init_cost=init_cost,
        attack_success_threshold=attack_success_threshold,
        patience=patience,
        cost_multiplier=cost_multiplier,
        early_stop_threshold=early_stop_threshold,
        early_stop_patience=early_stop_patience,
    )
    recover_seed, unlearn_seed = torch.randint(0, 2**62, (2,), generator=generator).tolist()
    result = recover_triggers(
        model,
        data.x,
        data.y,
        num_classes=data.num_classes,
        generator=torch.Generator().manual_seed(int(recover_seed)),
        device=device,
        threshold=threshold,
        steps=steps,
        batch_size=batch_size,
        check_every=check_every,
        lr=lr,
        init_cost=init_cost,
        attack_success_threshold=attack_success_threshold,
        patience=patience,
        cost_multiplier=cost_multiplier,
        reset_cost_to_zero=reset_cost_to_zero,
        early_stop=early_stop,
        early_stop_threshold=early_stop_threshold,
        early_stop_patience=early_stop_patience,
    )
    smallest = int(torch.argmin(result.norms))
    fields: dict[str, float | int | bool | str] = {
        "anomaly_index": result.anomaly_index,
        "flagged": bool(result.flagged),
        "flagged_labels": " ".join(str(k) for k in result.flagged),
        "mask_l1_min": float(result.norms[smallest]),
        "mask_l1_min_label": smallest,
        "mask_l1_median": float(median(result.norms)),
        "mask_l1": " ".join(_format(float(v)) for v in result.norms),
        "attack_success": " ".join(_format(float(v)) for v in result.success),
        "attack_success_min": float(result.success.min()),
        "unlearned": False,
    }
    artifacts = {
        "masks": result.masks,
        "patterns": result.patterns,
        "norms": result.norms,
        "success": result.success,
        "anomaly_indices": result.indices,
    }
    repaired: nn.Module | None = None
    if unlearn and result.flagged:
        unlearn_triggers(
            model,
            data.x,
            data.y,
            [result.triggers[k].as_trigger() for k in result.flagged],
            generator=torch.Generator().manual_seed(int(unlearn_seed)),
            ratio=unlearn_ratio,
            epochs=unlearn_epochs,
            batch_size=unlearn_batch_size,
            lr=unlearn_lr,
            device=device,
        )
        repaired = model
        fields["unlearned"] = True
    return Outcome(model=repaired, fields=fields, artifacts=artifacts)
