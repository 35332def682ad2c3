"""Tables to figures. Reads files or DataFrames; never imports torch or flwr."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_run(metrics: pd.DataFrame, out: str | Path, *, title: str | None = None) -> Path:
    """Main and backdoor accuracy per round of one run, saved as a PNG at ``out``."""
    out = Path(out)
    fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=150)
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
    plt.close(fig)
    return out
