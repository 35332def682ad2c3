"""Tables to figures. Reads files or DataFrames; never imports torch or flwr.

The paper figures (``plot_rounds``, ``plot_poisoning_curve``, ``plot_heatmap``,
``plot_durability``) take a table from :mod:`fedbackdoor.results` (the rounds table of
:func:`~fedbackdoor.results.gather_runs` or its :func:`~fedbackdoor.results.summarize`) and an
output path stem, write ``<stem>.png`` (300 dpi) and ``<stem>.pdf`` sized for one column of a
two-column paper (3.5 in wide, no text below 7 pt), and return the paths written; they return
``[]`` when the table lacks what the figure needs. A line is the mean over the runs that share
its settings (seeds) with a band from their minimum to their maximum. Runs that differ in any
other swept setting get lines of their own, labelled with it, so nothing is averaged away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedbackdoor.curves import ResistanceMethod, resistance_point
from fedbackdoor.files import atomic_path
from fedbackdoor.results import identity_columns, is_attack_column

#: Width of one column of a two-column paper, inches.
COLUMN_WIDTH = 3.5

_STYLE: dict[str, Any] = {
    "font.size": 7.5,
    "axes.labelsize": 7.5,
    "axes.titlesize": 7.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text, accepted by publishers
}


def _paper_style() -> AbstractContextManager[None]:
    return matplotlib.rc_context(_STYLE)  # type: ignore[arg-type]  # (stubs want literal keys)


_NAMES = {
    "main_acc": "main accuracy",
    "backdoor_acc": "backdoor accuracy",
    "attack.fraction": "attacker fraction",
    "final_main_acc": "final main accuracy",
    "final_backdoor_acc": "final backdoor accuracy",
    "resistance": "resistance point (attacker fraction)",
    "poisoned_share": "poisoned share of the training data",
}


#: Columns of a summary that other (identifying) settings determine: those settings do not
#: split the lines of a curve drawn against them.
_DETERMINE: dict[str, tuple[str, ...]] = {
    name: ("attack.fraction", "attack.poison_ratio", "attack.poison_count")
    for name in ("poisoned_share", "poisoned_samples")
}

# --- helpers ----------------------------------------------------------------------------------


def _paths(out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    if out.suffix in (".png", ".pdf"):
        out = out.with_suffix("")
    return out.with_name(f"{out.name}.png"), out.with_name(f"{out.name}.pdf")


def _save(fig: Figure, out: str | Path) -> list[Path]:
    """``<out>.png`` and ``<out>.pdf``, each written atomically."""
    paths = _paths(out)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:])
    return list(paths)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _fmt(value: object) -> str:
    if _missing(value):
        return "none"
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)


def _extend(table: pd.DataFrame, keys: list[str], skip: Sequence[str]) -> list[str]:
    """``keys`` and, in table order, every other identifying column (not run, complete, seed
    or ``skip``) that still varies once ``keys`` are fixed. A setting that follows from the
    keys (``attack.poison_ratio`` is 0 exactly when ``attack`` is none) adds nothing."""
    keys = list(keys)
    leave = {"run", "complete", "seed", *skip, *keys}
    for column in identity_columns(table):
        if column in leave:
            continue
        if keys:
            varies = table.groupby(keys, dropna=False)[column].nunique(dropna=False).max() > 1
        else:
            varies = table[column].nunique(dropna=False) > 1
        if varies:
            keys.append(column)
    return keys


def _series_keys(table: pd.DataFrame, primary: str, skip: Sequence[str] = ()) -> list[str]:
    return _extend(table, [primary] if primary in table.columns else [], skip)


def _label(keys: Sequence[str], values: Sequence[object], primary: str | None) -> str:
    if not keys:
        return "all runs"
    return ", ".join(
        _fmt(v) if k == primary else f"{k.rsplit('.', 1)[-1]}={_fmt(v)}"
        for k, v in zip(keys, values, strict=True)
    )


def _groups(table: pd.DataFrame, keys: list[str]) -> list[tuple[tuple[object, ...], pd.DataFrame]]:
    if not keys:
        return [((), table)]
    return [
        (tuple(None if _missing(v) else v for v in values), group)
        for values, group in table.groupby(keys, dropna=False, sort=True)
    ]


def _equal(column: pd.Series, value: object) -> pd.Series:
    if _missing(value):
        return column.isna()
    return column == value


def _complete(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["complete"].astype(bool)] if "complete" in table.columns else table


def _band(ax: Axes, x: pd.Index, stats: pd.DataFrame, colour: Any, label: str, **kw: Any) -> None:
    ax.plot(x, stats["mean"], color=colour, label=label, **kw)
    if (stats["max"] > stats["min"]).any():
        ax.fill_between(x, stats["min"], stats["max"], color=colour, alpha=0.2, lw=0)


def _accuracy_axis(ax: Axes, name: str) -> None:
    ax.set_ylabel(_NAMES.get(name, name))
    if name.endswith("_acc") or name.startswith("backdoor_acc"):
        ax.set_ylim(-0.02, 1.02)
    ax.grid(True)


def _legend_above(ax: Axes, handles: list[Any] | None = None) -> None:
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    if handles:
        # as many columns as labels of this length fit across a column of a paper
        longest = max(len(str(h.get_label())) for h in handles)
        ncol = max(1, min(len(handles), 4, 56 // (longest + 6)))
        ax.legend(
            handles=handles,
            loc="lower left",
            bbox_to_anchor=(0.0, 1.02),
            ncol=ncol,
            frameon=False,
            borderaxespad=0.0,
            handlelength=1.5,
            columnspacing=1.0,
        )


# --- paper figures ----------------------------------------------------------------------------


def plot_rounds(
    rounds: pd.DataFrame,
    out: str | Path,
    *,
    by: str = "defense",
    metrics: Sequence[str] = ("main_acc", "backdoor_acc"),
) -> list[Path]:
    """Per-round curves of ``metrics`` (one panel each), one line per value of ``by``.

    ``rounds`` is a :func:`~fedbackdoor.results.gather_runs` table; half-finished runs count
    in the rounds they reached. Needs ``run``, ``round`` and the metrics.
    """
    if rounds.empty or not {"run", "round", *metrics} <= set(rounds.columns) or not metrics:
        return []
    keys = _series_keys(rounds, by)
    # A setting shared by every line says nothing in a label ("fedavg, attack=alie" -> "alie").
    varying = [k for k in keys if rounds[k].nunique(dropna=False) > 1]
    keys = varying or keys[:1]
    groups = _groups(rounds, keys)
    many = len(groups) > 6  # legend beside the panels, two-column width
    colours = matplotlib.colormaps["tab20"] if len(groups) > 10 else None
    with _paper_style():
        fig = Figure(
            figsize=(2 * COLUMN_WIDTH if many else COLUMN_WIDTH, 0.5 + 1.45 * len(metrics))
        )
        grid = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)
        axes = list(grid[:, 0])
        for i, (values, group) in enumerate(groups):
            label = _label(keys, values, keys[0] if len(keys) == 1 else by)
            colour = f"C{i % 10}" if colours is None else colours(i % 20)
            for ax, metric in zip(axes, metrics, strict=True):
                stats = group.groupby("round")[metric].agg(["mean", "min", "max"]).dropna()
                _band(ax, stats.index, stats, colour, label)
        for ax, metric in zip(axes, metrics, strict=True):
            _accuracy_axis(ax, metric)
        axes[-1].set_xlabel("round")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        if many:
            axes[0].legend(
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                ncol=1 if len(groups) <= 2 * 6 * len(metrics) // 2 else 2,
                frameon=False,
                borderaxespad=0.0,
                handlelength=1.5,
            )
        else:
            _legend_above(axes[0])
        fig.tight_layout()
        return _save(fig, out)


def plot_poisoning_curve(
    summary: pd.DataFrame,
    out: str | Path,
    *,
    by: str = "defense",
    x: str = "attack.fraction",
    y: str = "final_backdoor_acc",
    point: Literal["knee", "inflection"] = "knee",
    method: ResistanceMethod = "logistic",
) -> list[Path]:
    """Final backdoor accuracy against the attacker fraction (or any other ``x``: a swept key
    such as ``attack.poison_ratio``, or ``poisoned_share``, the share of the federation's
    training samples that is poisoned), one line per value of ``by``, with each line's
    resistance point (:func:`~fedbackdoor.curves.resistance_point` by ``method``, in the units
    of ``x``) marked by a dashed vertical line and its value.

    ``summary`` is a :func:`~fedbackdoor.results.summarize` table; only complete runs count.
    Runs at ``x == 0`` (no attacker, including ``attack=none``) join every line whose settings
    other than the attack's they share. A line needs at least two attacked ``x`` values;
    settings run at one only are left out. For an ``x`` that other settings determine
    (``poisoned_share`` and ``poisoned_samples`` follow from ``attack.fraction``,
    ``attack.poison_ratio`` and ``attack.poison_count``) those settings do not split lines.
    """
    if summary.empty or not {x, y} <= set(summary.columns):
        return []
    skip = [x, *_DETERMINE.get(x, ())]
    table = _complete(summary)
    table = table[table[x].notna() & table[y].notna()]
    attacked, baseline = table[table[x] > 0], table[table[x] == 0]
    # a curve needs two attacked values: settings run at one value only are left out
    keys = _series_keys(attacked, by, skip=skip)
    curves = [group for _, group in _groups(attacked, keys) if group[x].nunique() >= 2]
    if not curves:
        return []
    attacked = pd.concat(curves)
    keys = _series_keys(attacked, by, skip=skip)
    with _paper_style():
        fig = Figure(figsize=(COLUMN_WIDTH, 2.5))
        ax = fig.subplots()
        handles: list[Any] = []
        marked = False
        for i, (values, group) in enumerate(_groups(attacked, keys)):
            base = baseline
            for key, value in zip(keys, values, strict=True):
                if not is_attack_column(key):
                    base = base[_equal(base[key], value)]
            points = pd.concat([base, group])
            colour = f"C{i % 10}"
            stats = points.groupby(x)[y].agg(["mean", "min", "max"])
            _band(ax, stats.index, stats, colour, _label(keys, values, by), marker="o")
            handles.append(ax.get_lines()[-1])
            rp = resistance_point(points[x], points[y], point=point, method=method)
            if math.isfinite(rp):
                marked = True
                ax.axvline(rp, color=colour, ls="--", lw=0.8)
                ax.annotate(
                    f"{rp:.2g}",
                    xy=(rp, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(-2, -2),
                    textcoords="offset points",
                    rotation=90,
                    ha="right",
                    va="top",
                    color=colour,
                    fontsize=7,
                )
        if marked:
            label = "resistance point" + ("" if method == "logistic" else f" ({method})")
            handles.append(Line2D([], [], color="0.4", ls="--", lw=0.8, label=label))
        ax.set_xlabel(_NAMES.get(x, x))
        ax.set_xlim(left=min(0.0, float(table[x].min())))
        _accuracy_axis(ax, y)
        _legend_above(ax, handles)
        fig.tight_layout()
        return _save(fig, out)


def plot_heatmap(
    summary: pd.DataFrame,
    out: str | Path,
    *,
    rows: str = "defense",
    cols: str = "attack",
    fraction: float | None = None,
) -> list[Path]:
    """An aggregation-rule benchmark: ``rows`` (defenses) x ``cols`` (attacks), each cell
    coloured by the final backdoor accuracy and labelled with the final main accuracy (top)
    and backdoor accuracy (bottom), means over seeds of complete runs.

    ``fraction`` keeps only the runs at that attacker fraction and those without attackers
    (fraction 0, ``attack=none``). Other swept settings that the row and column do not fix
    split rows (settings of the defense and the rest) or columns (``attack.*`` settings).
    Needs at least two cells.
    """
    values = ["final_main_acc", "final_backdoor_acc"]
    if summary.empty or not {rows, cols, *values} <= set(summary.columns):
        return []
    table = _complete(summary)
    if fraction is not None and "attack.fraction" in table.columns:
        table = table[table["attack.fraction"].isin([fraction, 0.0])]
    if table.empty:
        return []
    extra = _extend(table, [rows, cols], skip=())[2:]
    row_keys = [rows, *(c for c in extra if not is_attack_column(c))]
    col_keys = [cols, *(c for c in extra if is_attack_column(c))]
    cells = table.groupby([*row_keys, *col_keys], dropna=False)[values].mean().reset_index()

    def label_of(keys: list[str]) -> list[tuple[object, ...]]:
        return [
            tuple(None if _missing(v) else v for v in row)
            for row in cells[keys].itertuples(index=False)
        ]

    row_of, col_of = label_of(row_keys), label_of(col_keys)
    row_labels, col_labels = list(dict.fromkeys(row_of)), list(dict.fromkeys(col_of))
    if len(row_labels) * len(col_labels) < 2:
        return []
    main = np.full((len(row_labels), len(col_labels)), np.nan)
    backdoor = np.full_like(main, np.nan)
    for r, c, m, b in zip(row_of, col_of, cells[values[0]], cells[values[1]], strict=True):
        main[row_labels.index(r), col_labels.index(c)] = m
        backdoor[row_labels.index(r), col_labels.index(c)] = b

    def names(labels: list[tuple[object, ...]], keys: list[str], primary: str) -> list[str]:
        return [_label(keys, v, primary) for v in labels]

    width = COLUMN_WIDTH if len(col_labels) <= 5 else 7.0  # wider: a two-column figure
    with _paper_style():
        fig = Figure(figsize=(width, 0.9 + 0.36 * len(row_labels)))
        ax = fig.subplots()
        cmap = matplotlib.colormaps["Reds"].with_extremes(bad="0.9")  # grey: no run
        image = ax.imshow(np.ma.masked_invalid(backdoor), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for (i, j), b in np.ndenumerate(backdoor):
            if math.isnan(b):
                continue
            ax.text(
                j,
                i,
                f"{main[i, j]:.2f}\n{b:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                linespacing=1.1,
                color="white" if b > 0.6 else "black",
            )
        ax.set_xticks(range(len(col_labels)), names(col_labels, col_keys, cols))
        ax.set_yticks(range(len(row_labels)), names(row_labels, row_keys, rows))
        ax.tick_params(axis="x", labelrotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        ax.tick_params(length=0)
        title = "cell: main accuracy / backdoor accuracy"
        if fraction is not None:
            title = f"attacker fraction {fraction:g}; {title}"
        ax.set_title(title, fontsize=7)
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label("backdoor accuracy")
        fig.tight_layout()
        return _save(fig, out)


def plot_durability(
    rounds: pd.DataFrame,
    out: str | Path,
    *,
    by: str = "defense",
    metric: str = "backdoor_acc",
) -> list[Path]:
    """Backdoor accuracy per round after the attack stops, one line per value of ``by``, the
    attack window (``attack.start_round`` to ``attack.end_round``) shaded; one panel per
    window (at most four).

    Only runs whose attack ends before their last round logged (and that have attackers)
    count. Needs the ``attack.end_round`` column (always in a
    :func:`~fedbackdoor.results.gather_runs` table).
    """
    if rounds.empty or not {"run", "round", metric, "attack.end_round"} <= set(rounds.columns):
        return []
    per_run = rounds.groupby("run", sort=False).agg(
        last=("round", "max"),
        end=("attack.end_round", "first"),
        start=("attack.start_round", "first")
        if "attack.start_round" in rounds
        else ("round", "min"),
        fraction=("attack.fraction", "first") if "attack.fraction" in rounds else ("round", "size"),
    )
    start = pd.to_numeric(per_run["start"], errors="coerce").fillna(1)
    end = pd.to_numeric(per_run["end"], errors="coerce")
    stops = end.notna() & (end < per_run["last"]) & (per_run["fraction"] > 0)
    if not stops.any():
        return []
    window = pd.Series(list(zip(start, end, strict=True)), index=per_run.index)[stops]
    windows = sorted(set(window))[:4]
    table = rounds[rounds["run"].isin(window.index)]
    keys = _series_keys(table, by, skip=["attack.start_round", "attack.end_round"])
    colours = {values: f"C{i % 10}" for i, (values, _) in enumerate(_groups(table, keys))}
    with _paper_style():
        fig = Figure(figsize=(COLUMN_WIDTH, 0.6 + 1.45 * len(windows)))
        grid = fig.subplots(len(windows), 1, sharex=True, squeeze=False)
        axes = list(grid[:, 0])
        for ax, (first, last) in zip(axes, windows, strict=True):
            runs = window.index[[w == (first, last) for w in window]]
            ax.axvspan(first - 0.5, last + 0.5, color="0.88", lw=0, label="attack window")
            for values, group in _groups(table[table["run"].isin(runs)], keys):
                stats = group.groupby("round")[metric].agg(["mean", "min", "max"]).dropna()
                _band(ax, stats.index, stats, colours[values], _label(keys, values, by))
            _accuracy_axis(ax, metric)
            if len(windows) > 1:
                ax.set_title(f"attack in rounds {first:g}-{last:g}", fontsize=7, pad=2)
        axes[-1].set_xlabel("round")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = [], []
        for ax in axes:  # every series once, the window first
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        _legend_above(axes[0], handles)
        fig.tight_layout()
        return _save(fig, out)


def plot_posttrain(posttrain: pd.DataFrame, out: str | Path, *, by: str = "defense") -> list[Path]:
    """Backdoor accuracy before and after each post-training defense, per value of ``by``
    (the aggregation rule), at each run's last checkpoint: grouped bars, the mean over the runs
    that share the settings (seeds) with a whisker from their minimum to their maximum; the
    main accuracy after each as a dot on a second panel.

    ``posttrain`` is a :func:`~fedbackdoor.results.gather_posttrain` table. Detectors (STRIP,
    Neural Cleanse without unlearning) leave the model unchanged, so their "after" equals
    "before"; rows that were skipped or failed are left out.
    """
    need = {"run", "round", "posttrain", "backdoor_acc_before", "backdoor_acc_after"}
    if posttrain.empty or not need <= set(posttrain.columns):
        return []
    last = posttrain[posttrain["round"] == posttrain.groupby("run")["round"].transform("max")]
    last = last[last["backdoor_acc_after"].notna()]
    if last.empty:
        return []
    keys = _series_keys(last, by, skip=("posttrain",))
    keys = [by] if by in last.columns and not keys else keys
    label_of = {}
    groups = _groups(last, keys) if keys and by in last.columns else [((), last)]
    bars = ["before", *sorted(last["posttrain"].unique())]
    with _paper_style():
        fig = Figure(figsize=(COLUMN_WIDTH, 2.9))
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
        width = 0.8 / len(bars)
        labelled: set[str] = set()
        for g, (values, group) in enumerate(groups):
            label_of[g] = _label(keys, values, by) if keys else "all runs"
            per_run = group.groupby("run")
            before = per_run["backdoor_acc_before"].first()
            before_main = per_run["main_acc_before"].first()
            for b, bar in enumerate(bars):
                if bar == "before":
                    acc, main = before, before_main
                else:
                    rows = group[group["posttrain"] == bar]
                    acc, main = rows["backdoor_acc_after"], rows["main_acc_after"]
                if acc.empty:
                    continue
                x = g + (b - (len(bars) - 1) / 2) * width
                mean = float(acc.mean())
                top.bar(x, mean, width, color=f"C{b}", label=None if bar in labelled else bar)
                labelled.add(bar)
                if acc.max() > acc.min():
                    top.errorbar(
                        x, mean, yerr=[[mean - acc.min()], [acc.max() - mean]], color="k",
                        lw=0.6, capsize=1.5,
                    )  # fmt: skip
                bottom.plot(x, float(main.mean()), "o", color=f"C{b}")
        top.set_ylabel("backdoor accuracy")
        top.set_ylim(0, 1.02)
        top.grid(True, axis="y")
        bottom.set_ylabel("main accuracy")
        bottom.grid(True, axis="y")
        bottom.set_xticks(range(len(groups)), [label_of[g] for g in range(len(groups))])
        for tick in bottom.get_xticklabels():
            tick.set_rotation(30 if len(groups) > 3 else 0)
            tick.set_ha("right" if len(groups) > 3 else "center")
        _legend_above(top)
        fig.tight_layout()
        return _save(fig, out)


def plot_gradients(clients: pd.DataFrame, out: str | Path, *, by: str = "client_dp") -> list[Path]:
    """Hong et al.'s two artifacts per round: the norm of the malicious clients' mean gradient
    on poisoned samples against that on clean samples (top), and the cosine between the two
    (bottom), averaged over the round's malicious clients and the runs that share settings;
    the per-example-clipped values (what DP-SGD's clipping lets through) dashed, where logged.

    ``clients`` is a :func:`~fedbackdoor.results.gather_clients` table; needs the ``grad_*``
    columns of runs with ``gradient_analysis=true``.
    """
    need = {"run", "round", "grad_poison_norm", "grad_clean_norm", "grad_cosine"}
    if clients.empty or not need <= set(clients.columns):
        return []
    rows = clients[clients["grad_poison_norm"].notna()]
    if rows.empty:
        return []
    keys = [k for k in _series_keys(rows, by) if rows[k].nunique(dropna=False) > 1]
    with _paper_style():
        fig = Figure(figsize=(COLUMN_WIDTH, 3.0))
        top, bottom = fig.subplots(2, 1, sharex=True)
        for i, (values, group) in enumerate(_groups(rows, keys)):
            label = _label(keys, values, by) if keys else ""
            colour = f"C{i % 10}"
            means = group.groupby("round")[
                [c for c in group.columns if c.startswith("grad_")]
            ].mean()
            top.plot(means.index, means["grad_poison_norm"], color=colour, marker="o",
                     label=f"poisoned {label}".strip())  # fmt: skip
            top.plot(means.index, means["grad_clean_norm"], color=colour, marker="s", alpha=0.6,
                     label=f"clean {label}".strip())  # fmt: skip
            bottom.plot(means.index, means["grad_cosine"], color=colour, marker="o")
            if (
                "grad_poison_norm_clipped" in means
                and means["grad_poison_norm_clipped"].notna().any()
            ):
                top.plot(means.index, means["grad_poison_norm_clipped"], color=colour, ls="--",
                         marker="o", label=f"poisoned, clipped {label}".strip())  # fmt: skip
                top.plot(means.index, means["grad_clean_norm_clipped"], color=colour, ls="--",
                         marker="s", alpha=0.6)  # fmt: skip
                bottom.plot(means.index, means["grad_cosine_clipped"], color=colour, ls="--")
        top.set_ylabel("gradient norm")
        top.set_yscale("log")
        top.grid(True)
        bottom.set_ylabel("cosine")
        bottom.set_ylim(-1.02, 1.02)
        bottom.grid(True)
        bottom.set_xlabel("round")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend_above(top)
        fig.tight_layout()
        return _save(fig, out)


def plot_pareto(
    trials: pd.DataFrame,
    out: str | Path,
    *,
    x: str = "backdoor_acc",
    y: str = "main_acc",
    maximize_x: bool = False,
) -> list[Path]:
    """A search's trials (``fedbackdoor tune``'s ``trials.csv``): ``y`` against ``x``, every
    finished trial a point, the Pareto front (column ``pareto``) joined by a step line, the
    default configuration (``trial == "default"``) marked by a star.

    Needs a column ``state`` (only ``COMPLETE`` trials and the ``REFERENCE`` default are
    drawn); nothing is drawn without a finished trial.
    """
    if trials.empty or not {x, y, "state", "pareto"} <= set(trials.columns):
        return []
    done = trials[(trials["state"] == "COMPLETE") & trials[x].notna() & trials[y].notna()]
    default = trials[(trials["state"] == "REFERENCE") & trials[x].notna() & trials[y].notna()]
    if done.empty:
        return []
    with _paper_style():
        fig = Figure(figsize=(COLUMN_WIDTH, 2.5))
        ax = fig.subplots()
        ax.scatter(done[x], done[y], s=10, color="0.55", label="trial", zorder=2)
        front = done[done["pareto"].astype(bool)].sort_values(x, ascending=not maximize_x)
        ax.plot(
            front[x],
            front[y],
            color="C0",
            marker="o",
            drawstyle="steps-post",
            label="Pareto front",
            zorder=3,
        )
        if not default.empty:
            ax.scatter(
                default[x],
                default[y],
                marker="*",
                s=60,
                color="C3",
                label="default config",
                zorder=4,
            )
        # Axes fit the trials (a search's trials often sit close together): no fixed [0, 1].
        ax.set_xlabel(_NAMES.get(x, x) + (" (higher is better)" if maximize_x else ""))
        ax.set_ylabel(_NAMES.get(y, y))
        ax.grid(True)
        ax.margins(0.08)
        _legend_above(ax)
        fig.tight_layout()
        return _save(fig, out)
