"""Runs the configured post-training defenses on a run's checkpoints and records them.

The checkpoints are the final global model and, with ``posttrain.every = k``, every k-th
round's. The defenses get ``posttrain.server_size`` clean test samples drawn with the run's seed
(:class:`~fedbackdoor.posttrain.ServerData`); no client holds test data, and every accuracy in
``posttrain.csv`` is measured on the *rest* of the test set, so the "before" columns of a row
are the checkpoint's own main and backdoor accuracy on exactly the inputs the "after" columns
use (they differ slightly from ``metrics.csv``, which uses the whole test set).

``posttrain.csv`` has one row per checkpoint and defense: ``round``, ``posttrain`` (the
defense's name),
``main_acc_before``, ``backdoor_acc_before``, ``main_acc_after``, ``backdoor_acc_after`` (the
repaired model's; equal to before for a detector), ``main_acc_<stage>`` /
``backdoor_acc_<stage>`` for intermediate models (fine-pruning's ``pruned``), the defense's own
fields (Neural Cleanse's ``anomaly_index``, ``flagged_labels``, ...), ``target_flagged``
(whether a flagged label is the attack's target: the runner knows the attack, the defense does
not), ``seconds``, ``skipped`` and ``error``. A defense that fails (a model without a
convolution for fine-pruning) leaves its error in its row; the run and its other results go on.
Tensors a defense leaves for figures (Neural Cleanse's recovered triggers) are saved as
``posttrain/<defense>_round<r>.pt`` beside a figure.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from fedbackdoor.data.image_data import ImageData
from fedbackdoor.files import atomic_path
from fedbackdoor.metrics import Evaluator
from fedbackdoor.models import resolve_device
from fedbackdoor.posttrain import Outcome, PostTrainDefense, ServerData
from fedbackdoor.seeding import make_generator

__all__ = ["POSTTRAIN_FILE", "PostTrainer", "checkpoints"]

#: A run's post-training results.
POSTTRAIN_FILE = "posttrain.csv"
#: Columns of posttrain.csv that hold text made of numbers ("0 3": labels), read back as text.
_TEXT = {"flagged_labels": str, "mask_l1": str, "attack_success": str, "layer": str}


def checkpoints(num_rounds: int, every: int | None) -> list[int]:
    """The rounds whose global model the post-training defenses inspect: every ``every``-th
    round and the last."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"posttrain.every={every!r} must be null or an integer >= 1")
    rounds = set(range(every, num_rounds + 1, every)) if every else set()
    return sorted(rounds | {num_rounds})


class PostTrainer:
    """The run's post-training defenses, their data and their records.

    Parameters
    ----------
    cfg : DictConfig
        The run's resolved config (``posttrain``, ``attack``, ``seed``, ``device``).
    data : ImageData
        The run's dataset.
    model : nn.Module
        A model of the run's architecture (copied for every defense).
    run_dir : Path
        Where ``posttrain.csv`` and ``posttrain/`` go.
    say : callable
        Prints a line (the run's recorder).
    """

    def __init__(
        self,
        cfg: DictConfig,
        data: ImageData,
        model: nn.Module,
        run_dir: Path,
        say: Callable[[str], None] = print,
    ) -> None:
        node = cfg.posttrain
        self.defenses: dict[str, PostTrainDefense] = {
            str(name): instantiate(spec) for name, spec in (node.get("defenses") or {}).items()
        }
        self.rounds = checkpoints(int(cfg.num_rounds), node.get("every"))
        self.seed = int(cfg.seed)
        self.device = resolve_device(str(cfg.device))
        self.target = cfg.attack.get("target_label")
        self.model = model
        self.run_dir = run_dir
        self.say = say
        self.rows: list[dict[str, object]] = []
        if not self.defenses:  # nothing to run: no split of the test set, nothing to check
            return
        self.trigger_image = _trigger_image(cfg, data)
        size = node.get("server_size")
        n = len(data.y_test)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < n:
            raise ValueError(f"posttrain.server_size={size!r} must be an integer in [1, {n - 1}]")
        order = torch.randperm(n, generator=make_generator(self.seed, "posttrain-split"))
        held, rest = order[:size], order[size:]
        x_rest, y_rest = data.x_test[rest], data.y_test[rest]
        x_bd, y_bd = instantiate(cfg.attack.backdoor_test)(x_rest, y_rest)
        self.evaluator = Evaluator(
            x_rest, y_rest, x_bd, y_bd, batch_size=int(cfg.eval_batch_size), device=self.device
        )
        self.data = ServerData(
            x=data.x_test[held],
            y=data.y_test[held],
            num_classes=int(data.num_classes),
            x_test_clean=x_rest,
            x_test_triggered=x_bd,
        )

    def __bool__(self) -> bool:
        return bool(self.defenses)

    def keep_through(self, round_: int) -> None:
        """A resumed run: keep the rows of ``posttrain.csv`` through ``round_`` (later ones are
        recomputed). Columns a defense left empty come back as NaN, as they were written."""
        path = self.run_dir / POSTTRAIN_FILE
        if not self.defenses or not path.exists():
            return
        table = pd.read_csv(path, dtype=_TEXT)
        kept = table[table["round"] <= round_]
        self.rows = [
            {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in kept.to_dict("records")
        ]
        self.write()

    def due(self, round_: int) -> bool:
        """Whether ``round_``'s global model is a checkpoint."""
        return bool(self.defenses) and round_ in self.rounds

    def _model(self, state: Mapping[str, Tensor]) -> nn.Module:
        model = copy.deepcopy(self.model)
        model.load_state_dict(dict(state))
        return model.to(self.device)

    def run(self, round_: int, state: Mapping[str, Tensor]) -> list[dict[str, object]]:
        """Run every defense on ``round_``'s global model (``state``); append and write their
        rows; return them."""
        before = self.evaluator(self._model(state))
        outcomes: dict[str, Outcome] = {}
        rows = []
        for name, defense in self.defenses.items():
            row: dict[str, object] = {
                "round": round_,
                "posttrain": name,
                "main_acc_before": before["main_acc"],
                "backdoor_acc_before": before["backdoor_acc"],
            }
            started = time.perf_counter()
            try:
                outcome = defense(
                    self._model(state),
                    self.data,
                    generator=make_generator(self.seed, "posttrain", round_, name),
                    device=self.device,
                    earlier=outcomes,
                )
            except Exception as exc:  # noqa: BLE001 (recorded; the run's results are kept)
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                row["error"] = f"{type(exc).__name__}: {reason}"
                row["seconds"] = round(time.perf_counter() - started, 3)
                self.say(f"posttrain {name} at round {round_} FAILED: {row['error']}")
                (self.run_dir / "posttrain").mkdir(exist_ok=True)
                (self.run_dir / "posttrain" / f"{name}_round{round_}.error.txt").write_text(
                    traceback.format_exc()
                )
                rows.append(row)
                continue
            outcomes[name] = outcome
            row.update(self._describe(outcome))
            row["seconds"] = round(time.perf_counter() - started, 3)
            if outcome.skipped is not None:
                row["skipped"] = outcome.skipped
            else:
                repaired = outcome.model
                after = before if repaired is None else self.evaluator(repaired.to(self.device))
                row["main_acc_after"] = after["main_acc"]
                row["backdoor_acc_after"] = after["backdoor_acc"]
                for stage, model in outcome.stages.items():
                    measured = self.evaluator(model.to(self.device))
                    row[f"main_acc_{stage}"] = measured["main_acc"]
                    row[f"backdoor_acc_{stage}"] = measured["backdoor_acc"]
            if outcome.artifacts:
                self._keep(name, round_, outcome)
            self.say(_line(row))
            rows.append(row)
        self.rows += rows
        self.write()
        return rows

    def _keep(self, name: str, round_: int, outcome: Outcome) -> None:
        """Save a defense's tensors; draw recovered triggers (masks and patterns) beside the
        attack's true trigger."""
        folder = self.run_dir / "posttrain"
        folder.mkdir(exist_ok=True)
        artifacts = {k: v.detach().cpu() for k, v in outcome.artifacts.items()}
        torch.save(artifacts, folder / f"{name}_round{round_}.pt")
        if {"masks", "patterns"} <= set(artifacts):
            from fedbackdoor.posttrain.figures import plot_recovered_triggers  # noqa: PLC0415

            flagged = str(outcome.fields.get("flagged_labels", "")).split()
            plot_recovered_triggers(
                artifacts["masks"].numpy(),
                artifacts["patterns"].numpy(),
                self.trigger_image,
                [int(v) for v in flagged],
                folder / f"{name}_round{round_}",
                norms=artifacts["norms"].numpy() if "norms" in artifacts else None,
            )

    def _describe(self, outcome: Outcome) -> dict[str, object]:
        fields: dict[str, Any] = dict(outcome.fields)
        flagged = fields.get("flagged_labels")
        if isinstance(flagged, str) and self.target is not None:
            labels = {int(v) for v in flagged.split()}
            fields["target_flagged"] = int(self.target) in labels
        return fields

    def write(self) -> Path:
        """``posttrain.csv`` with every row so far (replaced atomically)."""
        path = self.run_dir / POSTTRAIN_FILE
        with atomic_path(path) as tmp:
            pd.DataFrame(self.rows).to_csv(tmp, index=False)
        return path


def _trigger_image(cfg: DictConfig, data: ImageData) -> Any:
    """The attack's trigger stamped on a mid-gray image (for figures), or ``None``."""
    node = cfg.attack.get("trigger")
    if node is None:
        return None
    gray = torch.full((1, data.channels, *data.image_size), 0.5)
    return instantiate(node).apply(gray)[0].numpy()


def _line(row: Mapping[str, object]) -> str:
    def number(key: str) -> str:
        value = row.get(key)
        return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else "-"

    text = (
        f"posttrain {row['posttrain']} at round {row['round']}: backdoor_acc "
        f"{number('backdoor_acc_before')} -> {number('backdoor_acc_after')}, main_acc "
        f"{number('main_acc_before')} -> {number('main_acc_after')}"
    )
    if row.get("skipped"):
        text += f" (skipped: {row['skipped']})"
    if "flagged_labels" in row:
        text += f"; flagged labels [{row['flagged_labels']}]"
        if "anomaly_index" in row:
            text += f", anomaly index {number('anomaly_index')}"
    if "far" in row:
        text += f"; FRR {number('frr')}, FAR {number('far')}"
    if "pruned_share" in row:
        text += f"; pruned {number('pruned_share')} of the channels"
    return text
