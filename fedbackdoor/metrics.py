"""Main-task accuracy, backdoor accuracy and detection rates.

Backdoor accuracy (attack success rate) is the fraction of triggered test inputs *whose true
label is not the target* that the model classifies as the target (Bagdasaryan et al. 2020;
Xie et al. 2020). Inputs of the target class are left out, since they would count as successes
even for a model with no backdoor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedbackdoor.training import evaluate


@dataclass(frozen=True)
class Evaluator:
    """The server's per-round evaluation: the clean test set and the attack's backdoor test set
    (built once, by :func:`fedbackdoor.experiment.build_evaluator`)."""

    x_test: Tensor
    y_test: Tensor
    x_backdoor: Tensor
    y_backdoor: Tensor
    batch_size: int = 256
    device: torch.device | str = "cpu"
    #: Extra backdoor tests, e.g. each local trigger of DBA, logged as ``backdoor_acc_part<i>``.
    parts: tuple[tuple[Tensor, Tensor], ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The metric names this evaluator returns, in order."""
        parts = tuple(f"backdoor_acc_part{i}" for i in range(len(self.parts)))
        return ("main_acc", "main_loss", "backdoor_acc", *parts, "diverged")

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """``main_acc``, ``main_loss``, ``backdoor_acc`` (and ``backdoor_acc_part<i>``) of
        ``model`` (accuracies are fractions in [0, 1]), and ``diverged``: 1 if a parameter or
        buffer of the model, or its output on any test input, is not finite (such outputs never
        count as correct, see :func:`~fedbackdoor.training.evaluate`), else 0."""
        clean = evaluate(
            model, self.x_test, self.y_test, batch_size=self.batch_size, device=self.device
        )
        backdoor = evaluate(
            model, self.x_backdoor, self.y_backdoor, batch_size=self.batch_size, device=self.device
        )
        result = {"main_acc": clean.accuracy, "main_loss": clean.loss}
        result["backdoor_acc"] = backdoor.accuracy
        broken = clean.nonfinite > 0 or backdoor.nonfinite > 0
        for i, (x_part, y_part) in enumerate(self.parts):
            part = evaluate(model, x_part, y_part, batch_size=self.batch_size, device=self.device)
            result[f"backdoor_acc_part{i}"] = part.accuracy
            broken = broken or part.nonfinite > 0
        finite_state = all(
            bool(torch.isfinite(v).all())
            for v in model.state_dict().values()
            if v.is_floating_point()
        )
        result["diverged"] = float(broken or not finite_state)
        return result


@dataclass(frozen=True)
class Detection:
    """Confusion counts of a defense's flags against the ground truth of one round."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def tpr(self) -> float:
        """Share of the sampled malicious clients that were flagged (nan if none was sampled)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def fpr(self) -> float:
        """Share of the sampled benign clients that were flagged (nan if none was sampled)."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else math.nan


def detection(flagged: Sequence[bool], malicious: Sequence[bool]) -> Detection:
    """Score a defense's ``flagged`` clients against which ones were ``malicious``."""
    if len(flagged) != len(malicious):
        raise ValueError(f"{len(flagged)} flags for {len(malicious)} clients")
    pairs = list(zip(flagged, malicious, strict=True))
    return Detection(
        tp=sum(f and m for f, m in pairs),
        fp=sum(f and not m for f, m in pairs),
        fn=sum(m and not f for f, m in pairs),
        tn=sum(not f and not m for f, m in pairs),
    )
