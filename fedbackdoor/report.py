"""``fedbackdoor report DIR``: every run below DIR (a sweep, or any folder of runs) as tidy
tables and paper figures in ``DIR/report/``.

Tables come from :mod:`fedbackdoor.results`, figures from :mod:`fedbackdoor.plots`; the
resistance point marked on poisoning curves is :func:`fedbackdoor.curves.resistance_point`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

from fedbackdoor.curves import RESISTANCE_METHODS, ResistanceMethod
from fedbackdoor.files import atomic_path
from fedbackdoor.plots import (
    plot_durability,
    plot_gradients,
    plot_heatmap,
    plot_poisoning_curve,
    plot_posttrain,
    plot_rounds,
)
from fedbackdoor.results import (
    SkippedRunWarning,
    client_resources,
    find_runs,
    gather_clients,
    gather_posttrain,
    gather_runs,
    posttrain_summary,
    summarize,
)

#: The report's folder inside DIR.
REPORT_DIR = "report"


class NoRunsError(FileNotFoundError):
    """DIR is missing, holds no run, or none of its runs can be read."""


class ReportError(ValueError):
    """A report option names something the runs do not have."""


def _for_parquet(table: pd.DataFrame) -> pd.DataFrame:
    """Columns that mix kinds of values (``attack.boost`` 3.0 in one run and ``auto`` in
    another) as text: a Parquet column has one type."""
    mixed = [
        c
        for c in table.columns
        if table[c].dtype == object and len({type(v) for v in table[c].dropna()}) > 1
    ]
    return table.assign(**{c: table[c].map(lambda v: v if pd.isna(v) else str(v)) for c in mixed})


def _figures(
    rounds: pd.DataFrame,
    summary: pd.DataFrame,
    out: Path,
    *,
    x: str = "attack.fraction",
    resistance: ResistanceMethod = "logistic",
) -> list[Path]:
    written: list[Path] = []
    fractions = sorted(rounds["attack.fraction"].dropna().unique())
    if len(fractions) > 1:  # one per-round figure per attacker fraction, lest lines crowd
        for fraction in fractions:
            subset = rounds[rounds["attack.fraction"] == fraction]
            written += plot_rounds(subset, out / f"rounds_fraction{fraction:g}")
    else:
        written += plot_rounds(rounds, out / "rounds")
    written += plot_poisoning_curve(summary, out / "poisoning_curve", x=x, method=resistance)
    # Defenses x attacks, at each attacker fraction where several attacks were run.
    if "attack" in summary:
        attacked = summary[summary["attack.fraction"].fillna(0) > 0]
        several = attacked.groupby("attack.fraction")["attack"].nunique()
        fractions = sorted(several.index[several > 1])
        for fraction in fractions:
            stem = "heatmap" if len(fractions) == 1 else f"heatmap_fraction{fraction:g}"
            written += plot_heatmap(summary, out / stem, fraction=fraction)
    written += plot_durability(rounds, out / "durability")
    return written


def write_report(
    root: str | Path,
    *,
    threshold: float = 0.5,
    x: str = "attack.fraction",
    resistance: ResistanceMethod = "logistic",
) -> Path:
    """Write ``root/report/`` and return it.

    It holds ``rounds.parquet`` and ``rounds.csv`` (:func:`~fedbackdoor.results.gather_runs`:
    one row per run and round), ``summary.csv`` (:func:`~fedbackdoor.results.summarize` with
    ``threshold``: one row per run) and the figures that apply to these runs, each as PNG and
    PDF: ``rounds`` (one per attacker fraction when several), ``poisoning_curve``, ``heatmap``,
    ``durability``. The poisoning curve is drawn against ``x`` (a summary column: a swept
    key, or ``poisoned_share`` / ``poisoned_samples``) with the resistance point by
    ``resistance`` (:func:`fedbackdoor.curves.resistance_point`). Every file is written
    atomically; figures of an earlier report that no
    longer apply are removed. Raises :class:`NoRunsError` when ``root`` holds no readable run;
    unreadable run folders are skipped with a :class:`~fedbackdoor.results.SkippedRunWarning`.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoRunsError(f"{root} is not a directory")
    if not find_runs(root):
        raise NoRunsError(f"no run under {root} (a run is a folder with a metrics.csv)")
    rounds = gather_runs(root)
    if rounds.empty:
        raise NoRunsError(f"no readable run under {root}")
    summary = summarize(rounds, threshold=threshold)
    if x not in summary.columns:
        raise ReportError(
            f"--x {x}: no such column in the runs' summary (the curve's x axis is a swept "
            "config key such as attack.fraction or attack.poison_ratio, or poisoned_share / "
            "poisoned_samples)"
        )
    posttrain = gather_posttrain(root, rounds)
    clients = gather_clients(root, rounds)
    if not posttrain.empty:
        summary = summary.merge(posttrain_summary(posttrain), on="run", how="left")
    resources = client_resources(clients)
    if not resources.empty:
        summary = summary.merge(resources, on="run", how="left")

    out = root / REPORT_DIR
    out.mkdir(exist_ok=True)
    with atomic_path(out / "rounds.parquet") as tmp:
        _for_parquet(rounds).to_parquet(tmp, index=False)
    with atomic_path(out / "rounds.csv") as tmp:
        rounds.to_csv(tmp, index=False)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    if not posttrain.empty:
        with atomic_path(out / "posttrain.csv") as tmp:
            posttrain.to_csv(tmp, index=False)
    elif (out / "posttrain.csv").exists():
        (out / "posttrain.csv").unlink()
    written = set(_figures(rounds, summary, out, x=x, resistance=resistance))
    written |= set(plot_posttrain(posttrain, out / "posttrain"))
    written |= set(plot_gradients(clients, out / "gradients"))
    for stale in [*out.glob("*.png"), *out.glob("*.pdf")]:
        if stale not in written:
            stale.unlink()
    return out


def describe(report: Path) -> list[str]:
    """A few lines on a written report: how many runs, which are incomplete, which figures."""
    summary = pd.read_csv(report / "summary.csv")
    incomplete = summary.loc[~summary["complete"].astype(bool), "run"].astype(str).tolist()
    lines = [f"{len(summary)} runs: {len(summary) - len(incomplete)} complete"]
    if incomplete:
        shown = ", ".join(incomplete[:5]) + (", ..." if len(incomplete) > 5 else "")
        lines[0] += f", {len(incomplete)} incomplete ({shown})"
    figures = sorted(p.stem for p in report.glob("*.png"))
    tables = "rounds.parquet rounds.csv summary.csv" + (
        " posttrain.csv" if (report / "posttrain.csv").exists() else ""
    )
    lines.append(f"tables: {tables}; figures: " + (" ".join(figures) if figures else "none apply"))
    return lines


def main(argv: list[str]) -> None:
    """``fedbackdoor report DIR [--threshold T]``: prints a summary, the report folder last."""
    parser = argparse.ArgumentParser(
        prog="fedbackdoor report",
        description="Tables and figures from every run below DIR, written to DIR/report/.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="a sweep or any folder of runs")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="backdoor accuracy that counts as planted, for rounds_to_threshold (default 0.5)",
    )
    parser.add_argument(
        "--x",
        default="attack.fraction",
        help="the poisoning curve's x axis: attack.fraction (default), another swept key "
        "(attack.poison_ratio, attack.poison_count) or poisoned_share / poisoned_samples "
        "(the federation's poisoned training samples, Mithridates' axis)",
    )
    parser.add_argument(
        "--resistance",
        default="logistic",
        choices=RESISTANCE_METHODS,
        help="how the resistance point is placed: our logistic fit (default), Mithridates' "
        "get_inflection_point, or its simple variant (first x above 50%%)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.threshold <= 1:
        parser.error(f"--threshold {args.threshold} must be in [0, 1]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedRunWarning)
        try:
            out = write_report(
                args.dir, threshold=args.threshold, x=args.x, resistance=args.resistance
            )
        except (NoRunsError, ReportError) as exc:
            error: Exception | None = exc
        else:
            error = None
    for warning in caught:  # a skipped folder as one plain line; anything else as Python would
        if issubclass(warning.category, SkippedRunWarning):
            print(f"fedbackdoor: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if error is not None:
        print(f"fedbackdoor: {error}", file=sys.stderr)
        raise SystemExit(2)
    for line in describe(out):
        print(line)
    print(out.resolve(), flush=True)
