"""Many runs' files (:mod:`fedbackdoor.run_files`) loaded back as tidy tables.

Many runs (a Hydra sweep, or any folder of runs) load back as one tidy table, one row per run
and round (:func:`gather_runs`), and as one row per run (:func:`summarize`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fedbackdoor.run_files import (
    COLUMNS,
    detection_totals,
    ratio,
    read_run_status,
)

# --- many runs -> one tidy table ---------------------------------------------------------------

#: Config keys that are columns of :func:`gather_runs` even when every run has the same value:
#: what a poisoning curve needs (attack.fraction, seed) and the attack window a durability
#: figure shades.
ALWAYS_KEYS: tuple[str, ...] = ("attack.fraction", "seed", "attack.start_round", "attack.end_round")

#: The group choices come first in this order; other choices follow alphabetically.
_CHOICE_ORDER: tuple[str, ...] = (
    "dataset",
    "model",
    "partition",
    "attack",
    "defense",
)

#: The metrics of :func:`summarize`, one row per run, after the identifying columns.
SUMMARY_METRICS: tuple[str, ...] = (
    "final_main_acc",
    "final_backdoor_acc",
    "peak_backdoor_acc",
    "main_acc_drop",
    "rounds_to_threshold",
    "det_tpr",
    "det_fpr",
    "mean_influence",
    "rounds_skipped",
    "rounds_diverged",
    "dp_epsilon",
    "san_precision",
    "san_recall",
    "poisoned_share",
    "poisoned_samples",
    "seconds_per_round",
    "aggregate_share",
    "rounds",
)


#: Config keys that say how the engine ran (Ray's address, cores, runs in flight), not what was
#: computed: never identifying columns (runs that differ only there are the same experiment,
#: as a resumed sweep already treats them: :func:`fedbackdoor.run_files.is_complete`).
ENGINE_PREFIX = "backend."

#: Numbers a run writes once to its ``run.json`` that :func:`gather_runs` repeats in each of
#: its rows (after the metrics): the share and number of the federation's training samples
#: the attackers poison (:func:`fedbackdoor.server.poisoned_samples`), Mithridates' x axis.
RUN_CONSTANTS: tuple[str, ...] = ("poisoned_share", "poisoned_samples")


class SkippedRunWarning(UserWarning):
    """A run folder that could not be read (its message names the folder and why)."""


def _natural_key(path: Path) -> tuple[tuple[int, int, str], ...]:
    # Hydra numbers sweep jobs 0, 1, ..., 10: sort 2 before 10.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def find_runs(root: str | Path) -> list[Path]:
    """Run directories at any depth below ``root`` (``root`` included): folders holding a
    ``metrics.csv``, in natural order (``2`` before ``10``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = {p.parent for p in root.rglob("metrics.csv") if p.is_file()}
    return sorted(runs, key=lambda p: _natural_key(p.relative_to(root)))


def _flatten(
    node: Mapping[Any, Any], prefix: str = "", outer: frozenset[str] = frozenset()
) -> dict[str, object]:
    """Dotted leaf keys of a nested config. Hydra's plumbing (``_target_``, ``_partial_``),
    lists of config nodes (``defense.pre``) and empty lists are left out, and so are the
    arguments of an instantiable node (one with ``_target_``) named like a setting of a node
    around it (``defense.rule.f`` is ``${defense.f}``): the group choices and the groups' own
    settings (``defense.max_norm``) already say what they hold. Lists of plain values become
    JSON text so that they compare and store as one value. ``outer``: the keys of the nodes
    around ``node``."""
    flat: dict[str, object] = {}
    instantiable = "_target_" in node
    around = outer | {str(key) for key in node}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if str(key).startswith("_") or (instantiable and str(key) in outer):
            continue
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}.", around))
        elif isinstance(value, list):
            if value and not any(isinstance(item, Mapping | list) for item in value):
                flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def _read_yaml(path: Path) -> Any:
    with path.open() as file:
        return yaml.safe_load(file)


def _choices(info: Mapping[str, Any]) -> dict[str, object]:
    """The run's group choices from its ``run.json`` (``attack/update`` becomes
    ``attack.update``)."""
    raw = info.get("choices")
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(k).replace("/", "."): v
        for k, v in raw.items()
        if not str(k).startswith("hydra/") and str(k) != "hydra"
    }


@dataclass
class _Run:
    """One readable run: its rows, flattened config, choices and completeness."""

    name: str
    metrics: pd.DataFrame
    config: dict[str, object]
    choices: dict[str, object]
    complete: bool


def _read_run(run: Path, name: str) -> _Run | str:
    """The run, or why it cannot be read."""
    try:
        config = _read_yaml(run / "config.yaml")
    except FileNotFoundError:
        return "no config.yaml"
    except (OSError, yaml.YAMLError) as exc:
        return f"unreadable config.yaml ({type(exc).__name__})"
    if not isinstance(config, Mapping):
        return "config.yaml holds no mapping"
    try:
        metrics, cut = _read_metrics(run / "metrics.csv")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return f"unreadable metrics.csv ({type(exc).__name__})"
    if "round" not in metrics.columns:
        return "metrics.csv has no 'round' column"
    if metrics.empty:
        return "metrics.csv holds no round"
    rounds = pd.to_numeric(metrics["round"], errors="coerce")
    if rounds.isna().any():
        return "metrics.csv has a non-numeric round"
    for column in metrics.columns:  # every column is a number (blank: not measured)
        values = pd.to_numeric(metrics[column], errors="coerce")
        bad = values.isna() & metrics[column].notna()
        if bad.any():
            first = bad.idxmax()
            return (
                f"metrics.csv column {column!r} holds a non-number "
                f"({metrics.at[first, column]!r} in round {rounds[first]:g})"
            )
        metrics[column] = values
    if cut is not None:  # a row cut short: the run was stopped while writing it
        warnings.warn(
            f"{run / 'metrics.csv'}: dropped its last row, cut short ({cut}); "
            "the run counts as incomplete",
            SkippedRunWarning,
            stacklevel=3,
        )
    metrics = metrics.assign(round=rounds.astype(int)).sort_values("round", kind="stable")
    info = read_run_status(run) or {}
    for constant in RUN_CONSTANTS:  # numbers the run computed once, in every row of its own
        value = info.get(constant)
        metrics[constant] = float(value) if isinstance(value, int | float) else math.nan
    complete = info.get("status") == "complete" and cut is None
    return _Run(name, metrics.reset_index(drop=True), _flatten(config), _choices(info), complete)


def _read_metrics(path: Path) -> tuple[pd.DataFrame, str | None]:
    """A run's ``metrics.csv`` without a last row that has fewer fields than the header (the
    file of a run stopped while writing it: pandas would fill the missing cells with NaN),
    and what that row lacked (None if there was none)."""
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():  # blank lines at the end are no row
        lines.pop()
    cut = None
    if len(lines) > 1:
        header, last = (next(csv.reader([line])) for line in (lines[0], lines[-1]))
        if len(last) < len(header):
            cut = f"{len(last)} of {len(header)} fields"
            lines.pop()
    return pd.read_csv(io.StringIO("\n".join(lines) + "\n")), cut


_MISSING = object()


def _same(values: list[object]) -> bool:
    def norm(value: object) -> object:
        if value is _MISSING or value is None:
            return _MISSING
        if isinstance(value, float) and math.isnan(value):
            return _MISSING
        return value

    return len({norm(v) for v in values}) <= 1


def _ordered_choices(names: set[str]) -> list[str]:
    first = [n for n in _CHOICE_ORDER if n in names]
    return first + sorted(names - set(first))


def gather_runs(root: str | Path) -> pd.DataFrame:
    """Every run below ``root`` as one tidy table: one row per run and round.

    Columns, in order: ``run`` (the run's folder relative to ``root``), ``complete``, the group
    choices (``dataset``, ``model``, ``partition``, ``attack``, ``defense``, then others such
    as ``attack.update``), the config keys that differ between the runs
    (flattened, e.g. ``defense.max_norm``; not ``backend.*``, which says how the engine ran)
    and always :data:`ALWAYS_KEYS`, then the metrics
    columns (``round`` first, extra columns such as ``backdoor_acc_part0`` kept), then
    :data:`RUN_CONSTANTS` from each run's ``run.json``. A key a run does not have is empty
    (NaN) in its rows.

    A run is complete when its ``run.json`` says so (a run without a readable one is not).
    Half-finished runs are kept with ``complete = False``. A folder whose ``metrics.csv`` is
    empty or broken, or whose ``config.yaml`` is missing or unreadable, is skipped with a
    :class:`SkippedRunWarning` naming it; the other runs are still gathered.
    """
    root = Path(root)
    runs: list[_Run] = []
    for path in find_runs(root):
        name = path.relative_to(root).as_posix()
        run = _read_run(path, name)
        if isinstance(run, str):
            warnings.warn(f"skipped {path}: {run}", SkippedRunWarning, stacklevel=2)
        else:
            runs.append(run)
    if not runs:
        return pd.DataFrame(columns=["run", "complete", *ALWAYS_KEYS, *COLUMNS, *RUN_CONSTANTS])

    choice_names = _ordered_choices({k for run in runs for k in run.choices})
    config_keys = {k for run in runs for k in run.config}
    swept = sorted(
        key
        for key in config_keys - set(ALWAYS_KEYS) - set(choice_names)
        if not key.startswith(ENGINE_PREFIX)
        and not _same([run.config.get(key, _MISSING) for run in runs])
    )
    keys = [*ALWAYS_KEYS, *swept]
    # The files' own column order (extra columns such as backdoor_acc_part0 sit after
    # backdoor_acc), round first, and every standard column even if no run has it.
    metric_names = ["round"]
    for run in runs:
        metric_names += [
            c for c in run.metrics.columns if c not in metric_names and c not in RUN_CONSTANTS
        ]
    metric_names += [c for c in COLUMNS if c not in metric_names]
    metric_names += list(RUN_CONSTANTS)  # last: the run's own numbers from its run.json

    def cell(value: object) -> object:
        return math.nan if value is None or value is _MISSING else value

    frames = []
    for run in runs:
        ident: dict[str, object] = {"run": run.name, "complete": run.complete}
        ident.update({c: cell(run.choices.get(c)) for c in choice_names})
        ident.update({k: cell(run.config.get(k, _MISSING)) for k in keys})
        head = pd.DataFrame({c: [v] * len(run.metrics) for c, v in ident.items()})
        frames.append(pd.concat([head, run.metrics], axis=1))
    table = pd.concat(frames, ignore_index=True)
    for name in metric_names:
        if name not in table.columns:
            table[name] = math.nan
    # A group no run chose (left at null) identifies nothing.
    choice_names = [c for c in choice_names if table[c].notna().any()]
    table = table[["run", "complete", *choice_names, *keys, *metric_names]]
    table["complete"] = table["complete"].astype(bool)
    return table.infer_objects()


def identity_columns(table: pd.DataFrame) -> list[str]:
    """The columns that say which run a row belongs to: everything before the metrics (before
    ``round`` in a :func:`gather_runs` table, before ``final_main_acc`` in a summary)."""
    columns = list(table.columns)
    for first_metric in ("round", SUMMARY_METRICS[0]):
        if first_metric in columns:
            return columns[: columns.index(first_metric)]
    return columns


def is_attack_column(name: str) -> bool:
    """Whether a column is about the attack (``attack``, ``attack.*``)."""
    return name == "attack" or name.startswith("attack.")


def _is_baseline(row: Mapping[str, Any]) -> bool:
    """A run without attackers: ``attack.fraction == 0`` or ``attack == "none"``."""
    fraction = row.get("attack.fraction")
    if isinstance(fraction, numbers.Real) and fraction == 0:
        return True
    return bool(row.get("attack") == "none")


def _key(row: Mapping[str, Any], names: list[str]) -> tuple[object, ...]:
    return tuple(None if pd.isna(row[n]) else row[n] for n in names)


def _aggregate_share(trained: pd.DataFrame) -> float:
    if "aggregate_seconds" not in trained:
        return math.nan
    timed = trained[trained["aggregate_seconds"].notna()]
    return ratio(timed["aggregate_seconds"], timed["seconds"]) if len(timed) else math.nan


def _mean_influence(trained: pd.DataFrame) -> float:
    if "mal_influence" not in trained:
        return math.nan
    attacked = trained[(trained["n_malicious"] > 0) & trained["mal_influence"].notna()]
    return float(attacked["mal_influence"].mean()) if len(attacked) else math.nan


def _count(trained: pd.DataFrame, column: str) -> int:
    return int((trained[column].fillna(0) > 0).sum()) if column in trained else 0


def _last(trained: pd.DataFrame, column: str) -> float:
    if column not in trained:
        return math.nan
    values = trained[column].dropna()
    return float(values.iloc[-1]) if len(values) else math.nan


def _sanitization(trained: pd.DataFrame) -> dict[str, float]:
    """Run-level precision and recall of the sanitizers from the rounds' totals."""
    if "san_removed" not in trained or not trained["san_removed"].notna().any():
        return {"san_precision": math.nan, "san_recall": math.nan}
    rows = trained[trained["san_removed"].notna()]
    removed_poisoned = (rows["san_precision"].fillna(0) * rows["san_removed"]).round()
    return {
        "san_precision": ratio(removed_poisoned, rows["san_removed"]),
        "san_recall": ratio(removed_poisoned, rows["san_poisoned"])
        if "san_poisoned" in rows
        else math.nan,
    }


def summarize(rounds: pd.DataFrame, *, threshold: float = 0.5) -> pd.DataFrame:
    """One row per run of a :func:`gather_runs` table: its identifying columns, then

    ``final_main_acc``, ``final_backdoor_acc``
        at the last round logged;
    ``peak_backdoor_acc``
        the highest backdoor accuracy of rounds >= 1;
    ``main_acc_drop``
        the final main accuracy of the matching no-attack runs minus this run's: runs with
        ``attack.fraction == 0`` or ``attack == "none"`` that are complete and agree on every
        identifying column that is not about the attack (``attack``, ``attack.*``) (mean over
        them if several); NaN when there is none;
    ``rounds_to_threshold``
        the first round >= 1 whose backdoor accuracy is above ``threshold``; NaN if none;
    ``det_tpr``, ``det_fpr``
        over the whole run: the malicious clients flagged / the malicious clients sampled, and
        the benign clients flagged / the benign clients sampled, summed over the rounds whose
        detection columns are filled; NaN when the defense flags nobody by design;
    ``mean_influence``
        the mean over rounds >= 1 with a malicious update aggregated of ``mal_influence``, the
        share of the aggregate's weight that came from malicious updates; NaN if none;
    ``rounds_skipped``, ``rounds_diverged``
        rounds >= 1 in which the global model was not updated (the rule could not run, no
        valid update, a non-finite aggregate), and rounds whose global model computed a
        non-finite output on a test input;
    ``dp_epsilon``
        with ``client_dp``: the largest privacy spending of any client by the last round (at
        ``client_dp.delta``); NaN without DP-SGD;
    ``san_precision``, ``san_recall``
        with ``sanitize``: over the whole run, the share of the samples the sanitizers dropped
        that were poisoned, and the share of the poisoned samples they were given that they
        dropped; NaN without sanitization (or without poisoned samples, for the recall);
    ``poisoned_share``, ``poisoned_samples``
        the share and number of the federation's training samples the attackers poison (from
        ``run.json``; 0 without data poisoning; NaN for runs written before it was recorded);
    ``seconds_per_round``
        the mean of ``seconds`` over rounds >= 1;
    ``aggregate_share``
        the server step's share of the rounds' time: sum of ``aggregate_seconds`` / sum of
        ``seconds`` over rounds >= 1 (NaN for runs that did not log it);
    ``rounds``
        the number of rounds logged after round 0;
    ``complete``
        as in the rounds table.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold={threshold} must be in [0, 1]")
    ident = [c for c in identity_columns(rounds) if c != "complete"]
    rows: list[dict[str, object]] = []
    for _, run in rounds.groupby("run", sort=False):
        run = run.sort_values("round", kind="stable")
        last = run.iloc[-1]
        trained = run[run["round"] >= 1]
        above = trained[trained["backdoor_acc"] > threshold]
        detected = detection_totals(run)
        row = {c: last[c] for c in ident}
        row.update(
            final_main_acc=float(last["main_acc"]),
            final_backdoor_acc=float(last["backdoor_acc"]),
            peak_backdoor_acc=float(trained["backdoor_acc"].max()) if len(trained) else math.nan,
            main_acc_drop=math.nan,
            rounds_to_threshold=float(above["round"].iloc[0]) if len(above) else math.nan,
            det_tpr=detected["det_tpr"],
            det_fpr=detected["det_fpr"],
            mean_influence=_mean_influence(trained),
            rounds_skipped=_count(trained, "skipped"),
            rounds_diverged=_count(trained, "diverged"),
            dp_epsilon=_last(trained, "dp_epsilon"),
            **_sanitization(trained),
            poisoned_share=_last(run, "poisoned_share"),
            poisoned_samples=_last(run, "poisoned_samples"),
            seconds_per_round=float(trained["seconds"].mean()) if len(trained) else math.nan,
            aggregate_share=_aggregate_share(trained),
            rounds=len(trained),
            complete=bool(last["complete"]) if "complete" in run else False,
        )
        rows.append(row)
    summary = pd.DataFrame(rows, columns=[*ident, *SUMMARY_METRICS, "complete"])

    match = [c for c in ident if c != "run" and not is_attack_column(c)]
    baseline_acc: dict[tuple[object, ...], list[float]] = {}
    for _, row in summary.iterrows():
        if row["complete"] and _is_baseline(row):
            baseline_acc.setdefault(_key(row, match), []).append(float(row["final_main_acc"]))
    summary["main_acc_drop"] = [
        float(np.mean(baseline_acc[_key(row, match)])) - float(row["final_main_acc"])
        if _key(row, match) in baseline_acc
        else math.nan
        for _, row in summary.iterrows()
    ]
    return summary.infer_objects()


# --- per-run side files: post-training defenses, clients' reports ------------------------------

#: The columns of a run's ``posttrain.csv`` that :func:`posttrain_summary` carries into the
#: run's summary row (as ``<defense>.<column>``), at the run's final checkpoint.
POSTTRAIN_SUMMARY: tuple[str, ...] = (
    "main_acc_after",
    "backdoor_acc_after",
    "anomaly_index",
    "flagged_labels",
    "target_flagged",
    "pruned_share",
    "frr",
    "far",
    "skipped",
    "error",
)


#: Columns of the side files that hold text made of numbers ("0 3": labels), kept as text.
_TEXT_COLUMNS = {"flagged_labels": str, "mask_l1": str, "attack_success": str, "layer": str}


def _side_table(root: str | Path, rounds: pd.DataFrame, filename: str) -> pd.DataFrame:
    """Every run's ``filename`` (a CSV beside its metrics) with the run's identifying columns
    in front; runs without one are left out; an unreadable one is skipped with a warning."""
    root = Path(root)
    ident = [c for c in identity_columns(rounds) if c != "complete"]
    frames = []
    for name, run in rounds.groupby("run", sort=False):
        path = root / str(name) / filename
        if not path.is_file():
            continue
        try:
            table = pd.read_csv(path, dtype=_TEXT_COLUMNS)
        except (OSError, ValueError, pd.errors.EmptyDataError) as exc:
            warnings.warn(f"skipped {path}: {exc}", SkippedRunWarning, stacklevel=3)
            continue
        first = run.iloc[0]
        head = pd.DataFrame({c: [first[c]] * len(table) for c in ident})
        frames.append(pd.concat([head, table], axis=1))
    if not frames:
        return pd.DataFrame(columns=ident)
    return pd.concat(frames, ignore_index=True).infer_objects()


def gather_posttrain(root: str | Path, rounds: pd.DataFrame) -> pd.DataFrame:
    """Every run's ``posttrain.csv`` (:mod:`fedbackdoor.posttrain.runner`: one row per
    checkpoint and post-training defense), the run's identifying columns in front."""
    return _side_table(root, rounds, "posttrain.csv")


def gather_clients(root: str | Path, rounds: pd.DataFrame) -> pd.DataFrame:
    """Every run's ``clients.csv`` (one row per client and round: DP-SGD spending,
    sanitization counts, gradient analysis), the run's identifying columns in front."""
    return _side_table(root, rounds, "clients.csv")


def posttrain_summary(posttrain: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the :data:`POSTTRAIN_SUMMARY` columns of each post-training defense at
    the run's last checkpoint, as ``<defense>.<column>`` (e.g. ``neural_cleanse.anomaly_index``,
    ``fine_pruning.backdoor_acc_after``)."""
    if posttrain.empty or "posttrain" not in posttrain:
        return pd.DataFrame(columns=["run"])
    rows = []
    for name, run in posttrain.groupby("run", sort=False):
        last = run[run["round"] == run["round"].max()]
        row: dict[str, object] = {"run": name}
        for _, entry in last.iterrows():
            for column in POSTTRAIN_SUMMARY:
                if column in entry and not _missing_cell(entry[column]):
                    row[f"{entry['posttrain']}.{column}"] = entry[column]
        rows.append(row)
    return pd.DataFrame(rows)


def client_resources(clients: pd.DataFrame) -> pd.DataFrame:
    """One row per run from its ``clients.csv``: ``client_seconds`` (the mean seconds a client
    took for a round), ``client_seconds_max``, ``peak_rss_mb`` (the largest resident memory of
    any process that trained a client) and ``gpu_peak_mb`` (the largest CUDA memory of a
    client's round; NaN without a GPU). Runs whose clients did not record them are left out."""
    columns = ["run", "client_seconds", "client_seconds_max", "peak_rss_mb", "gpu_peak_mb"]
    if clients.empty or "client_seconds" not in clients:
        return pd.DataFrame(columns=columns)
    rows = []
    for name, run in clients.groupby("run", sort=False):
        seconds = pd.to_numeric(run["client_seconds"], errors="coerce").dropna()
        if seconds.empty:
            continue

        def peak(column: str, run: pd.DataFrame = run) -> float:
            if column not in run:
                return math.nan
            values = pd.to_numeric(run[column], errors="coerce").dropna()
            return float(values.max()) if len(values) else math.nan

        rows.append(
            {
                "run": name,
                "client_seconds": float(seconds.mean()),
                "client_seconds_max": float(seconds.max()),
                "peak_rss_mb": peak("peak_rss_mb"),
                "gpu_peak_mb": peak("gpu_peak_mb"),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _missing_cell(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- multi-objective comparisons ----------------------------------------------------------------


def pareto_mask(values: Any, directions: Sequence[str]) -> np.ndarray:
    """Which rows of ``values`` (``[n, m]``, one column per objective) are Pareto-optimal.

    A row is dominated when another is at least as good in every objective and strictly better
    in one (``directions[j]`` is ``"maximize"`` or ``"minimize"``); rows with a NaN are never
    on the front; equal rows are on it together. The same definition as Optuna's
    ``Study.best_trials`` (tested against it).

    Returns
    -------
    numpy.ndarray
        ``[n]`` bool.
    """
    table = np.asarray(values, dtype=float)
    if table.ndim != 2 or table.shape[1] != len(directions):
        raise ValueError(
            f"values must be [n, {len(directions)}] for {len(directions)} directions, "
            f"got shape {table.shape}"
        )
    signs = []
    for direction in directions:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction {direction!r} must be 'maximize' or 'minimize'")
        signs.append(1.0 if direction == "maximize" else -1.0)
    score = table * np.asarray(signs)  # larger is better in every column
    valid = ~np.isnan(score).any(axis=1)
    front = np.zeros(len(score), dtype=bool)
    for i in np.flatnonzero(valid):
        others = score[valid]
        dominated = ((others >= score[i]).all(axis=1) & (others > score[i]).any(axis=1)).any()
        front[i] = not dominated
    return front
