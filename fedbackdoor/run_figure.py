"""One run's figure: main and backdoor accuracy per round (``accuracy.png``), drawn from the
run's own files (``metrics.csv``, ``config.yaml``). Plain matplotlib Figures: no pyplot, the
process's backend left alone."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedbackdoor.run_files import load_metrics

__all__ = ["describe", "plot_run", "plot_run_dir"]


def plot_run(metrics: pd.DataFrame, out: str | Path, *, title: str | None = None) -> Path:
    """Main and backdoor accuracy per round of one run, saved as a PNG at ``out``."""
    out = Path(out)
    fig = Figure(figsize=(5.0, 3.2), dpi=150)
    ax = fig.subplots()
    ax.plot(metrics["round"], metrics["main_acc"], marker="o", ms=3, label="main accuracy")
    ax.plot(metrics["round"], metrics["backdoor_acc"], marker="s", ms=3, label="backdoor accuracy")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_xlim(metrics["round"].min() - 0.5, metrics["round"].max() + 0.5)
    if title:
        ax.set_title(textwrap.fill(title, 70), fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    return out


def describe(cfg: Mapping[str, Any]) -> str:
    """A one-line summary of a run for figure titles, from its resolved config (a mapping, as
    read from its ``config.yaml``)."""

    def name(node: Mapping[str, Any]) -> str:
        return str(node["_target_"]).rsplit(".", 1)[-1]

    defense, attack_cfg = cfg["defense"], cfg["attack"]
    steps = [name(t) for t in defense.get("pre") or []]
    steps += [name(defense["rule"])] + [name(t) for t in defense.get("post") or []]
    attack = "no attack"
    if attack_cfg["fraction"] > 0:
        attack = f"{attack_cfg['fraction']:.0%} malicious, boost {attack_cfg.get('boost', 1)}"
        update = attack_cfg.get("update") or {}
        if update.get("train") is not None:
            attack += f", trained with {name(update['train'])}"
        if update.get("apply") is not None:
            attack += f", update {name(update['apply'])}"
    dataset = cfg["dataset"].get("name", "data")
    return f"{dataset}, {cfg['num_clients']} clients: {attack}; defense {'+'.join(steps)}"


def plot_run_dir(run_dir: str | Path) -> Path | None:
    """``accuracy.png`` of a run folder, from its ``metrics.csv`` and ``config.yaml`` (titled by
    :func:`describe`); ``None`` if the run has no row yet."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    if not len(metrics):
        return None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return plot_run(metrics, run_dir / "accuracy.png", title=describe(config))
