"""Defenses on the trained global model (post-training): Neural Cleanse, fine-pruning, STRIP.

Every defense is a function configured under ``posttrain.defenses.<name>`` (``_target_`` with
``_partial_: true``) and called as ``defense(model, data, *, generator, device, earlier)``:

* ``model`` -- a *copy* of the checkpoint's global model (the defense may change it freely);
* ``data`` -- :class:`ServerData`: clean samples no client holds, drawn from the test set, and
  what the defense may know of the task (classes, image shape);
* ``generator`` -- the defense's own ``torch.Generator`` (derived from the run's seed, the
  checkpoint's round and the defense's name);
* ``earlier`` -- the outcomes of the defenses that ran before it on the same checkpoint, by name
  (fine-pruning that runs only when Neural Cleanse flagged a label reads it here).

It returns a :class:`Outcome`: the repaired model (``None`` for a detector that does not change
the model), intermediate models worth evaluating (fine-pruning's pruned-only model), and its
own findings as flat fields (numbers, bools, short strings) that become columns of the run's
``posttrain.csv``. The runner (:mod:`fedbackdoor.posttrain.runner`) evaluates the models on the
held-out part of the test set; a defense never evaluates the backdoor itself (it does not know
the trigger), except through ``data.triggered`` where the defense's *report* needs it (STRIP's
false-acceptance rate), never to make its decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = ["Outcome", "PostTrainDefense", "ServerData"]


@dataclass(frozen=True)
class ServerData:
    """What a post-training defense may use.

    Attributes
    ----------
    x, y : Tensor
        Clean samples with their true labels (``[m, C, H, W]`` in ``[0, 1]``, int64), drawn from
        the test set with the run's seed; no client holds them and the runner evaluates on the
        rest of the test set, never on these.
    num_classes : int
        Classes of the task.
    x_test_clean : Tensor
        Clean held-out inputs (the evaluation part of the test set), for input-level detectors
        that report a false-rejection rate (STRIP). Never used to decide anything else.
    x_test_triggered : Tensor
        The backdoor test's triggered held-out inputs, for reporting a detector's
        false-acceptance rate only (STRIP). May be empty (an attack with no trigger).
    """

    x: Tensor
    y: Tensor
    num_classes: int
    x_test_clean: Tensor
    x_test_triggered: Tensor


@dataclass
class Outcome:
    """What one post-training defense found and did.

    Attributes
    ----------
    model : nn.Module or None
        The repaired model (evaluated as the defense's "after"); ``None`` when the defense only
        detects (the model is unchanged).
    stages : dict of str to nn.Module
        Intermediate models to evaluate as well, by stage name (fine-pruning: ``"pruned"``,
        before fine-tuning); evaluated into ``main_acc_<stage>`` / ``backdoor_acc_<stage>``.
    fields : dict of str to float, int, bool or str
        The defense's findings, one ``posttrain.csv`` column each (e.g. ``anomaly_index``,
        ``flagged_labels`` as ``"0 3"``, ``pruned_share``, ``frr``, ``far``).
    skipped : str or None
        Why the defense did not run (e.g. fine-pruning when Neural Cleanse flagged nothing).
    artifacts : dict of str to Tensor
        Tensors a defense leaves for figures (Neural Cleanse's recovered masks and patterns),
        saved by the runner as ``posttrain/<defense>_round<r>.pt``.
    """

    model: nn.Module | None = None
    stages: dict[str, nn.Module] = field(default_factory=dict)
    fields: dict[str, float | int | bool | str] = field(default_factory=dict)
    skipped: str | None = None
    artifacts: dict[str, Tensor] = field(default_factory=dict)


class PostTrainDefense(Protocol):
    """The signature of every ``posttrain.defenses.<name>`` function."""

    def __call__(
        self,
        model: nn.Module,
        data: ServerData,
        *,
        generator: torch.Generator,
        device: torch.device | str,
        earlier: Mapping[str, Outcome],
    ) -> Outcome: ...
