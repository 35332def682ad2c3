"""The layered pipeline, measured stage by stage: client data sanitization -> client DP-SGD ->
robust aggregation -> Neural Cleanse on the final model -> fine-pruning if it flagged a label.

    .venv/bin/python simulations/defense_in_depth.py [--scale paper] [--out DIR] [OVERRIDES]

Each stage is added to the ones before it (``stage0`` none, ``stage1`` + sanitization,
``stage2`` + DP-SGD, ``stage3`` + norm clipping, the whole of ``+experiment=defense_in_depth``);
every run also runs Neural Cleanse and fine-pruning-if-flagged on its final model, so the
post-training stages are measured on every aggregation stage (``posttrain.csv``). Against:

* BadNets and blend (``attack.follows_protocol=true``: poisoned data, honest code -- the
  attackers sanitize and run DP-SGD like everyone else);
* model replacement (BadNets + boost auto, malicious code: the attackers skip the client-side
  stages, only aggregation and post-training can stop it);
* no attack (each stage's cost in main accuracy).

Besides the sweep's report, writes ``stages.csv`` in the study folder and prints it: per attack
and stage, the final backdoor and main accuracy, and after the post-training stages of the
last aggregation stage.

Small (default): Fashion-MNIST, 20 clients, 10 per round, 10 rounds, 20 % attackers, seed 0:
4 stages x 4 attacks = 16 runs. Paper: CIFAR-10, ResNet-18, 100 clients, 3 seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from _study import PAPER, run_study

STAGES: tuple[tuple[str, list[str]], ...] = (
    ("stage0 none", []),
    ("stage1 +sanitization", ["sanitize=activation_clustering"]),
    ("stage2 +DP-SGD", ["sanitize=activation_clustering", "client_dp=dpsgd"]),
    ("stage3 +clipping", ["+experiment=defense_in_depth"]),
)
POST = ["posttrain=[neural_cleanse,fine_pruning]", "posttrain.defenses.fine_pruning.when=flagged"]
HONEST = ["attack=none,badnets,blend", "attack.follows_protocol=true"]
REPLACEMENT = ["attack=scaling"]
SMALL = ["seed=0", "num_rounds=10", "attack.fraction=0.2"]


def _grid(common: list[str]) -> list[list[str]]:
    parts = []
    for _, overrides in STAGES:
        post = [] if "+experiment=defense_in_depth" in overrides else POST
        parts.append([*HONEST, *overrides, *post, *common])
        parts.append([*REPLACEMENT, *overrides, *post, *common])
    return parts


GRIDS = {"small": _grid(SMALL), "paper": _grid(["seed=0,1,2", "attack.fraction=0.2", *PAPER])}


def stage_table(study: Path) -> pd.DataFrame:
    """Per attack and stage: final backdoor and main accuracy (mean over seeds), then the
    post-training stages of the last aggregation stage's runs."""
    summary = pd.read_csv(study / "report" / "summary.csv")
    summary["stage"] = [STAGES[int(str(r).split("/")[0][4:]) // 2][0] for r in summary["run"]]
    rows = []
    for (attack, stage), runs in summary.groupby(["attack", "stage"], sort=True):
        rows.append(
            {
                "attack": attack,
                "stage": stage,
                "backdoor_acc": runs["final_backdoor_acc"].mean(),
                "main_acc": runs["final_main_acc"].mean(),
            }
        )
    last = summary[summary["stage"] == STAGES[-1][0]]
    for name, label in (
        ("neural_cleanse", "stage4 +Neural Cleanse (unlearning off: detection only)"),
        ("fine_pruning", "stage5 +fine-pruning if flagged"),
    ):
        column = f"{name}.backdoor_acc_after"
        for attack, runs in last.groupby("attack"):
            row = {"attack": attack, "stage": label}
            if column in runs:
                row["backdoor_acc"] = runs[column].mean()
                row["main_acc"] = runs[f"{name}.main_acc_after"].mean()
            if f"{name}.skipped" in runs:
                row["note"] = "; ".join(sorted(set(runs[f"{name}.skipped"].dropna().astype(str))))
            if name == "neural_cleanse" and f"{name}.flagged_labels" in runs:
                flagged = runs[f"{name}.flagged_labels"].fillna("").astype(str)
                row["note"] = "flagged: " + "; ".join(f"[{f}]" for f in flagged)
            rows.append(row)
    return pd.DataFrame(rows).sort_values(["attack", "stage"], kind="stable")


if __name__ == "__main__":
    report = run_study("defense_in_depth", GRIDS, sys.argv[1:], description=__doc__ or "")
    table = stage_table(report.parent)
    table.to_csv(report.parent / "stages.csv", index=False)
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
