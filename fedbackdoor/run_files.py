"""The files of one run: ``metrics.csv`` (a row per round, flushed as the round ends),
``run.json`` (its status, replaced atomically) and ``config.yaml``; and the recorder that writes
them while a run goes on (:class:`RunRecorder`), with its terminal lines.

A run that dies keeps every round it finished. Results are plain CSV plus the resolved config,
never pickles. Flower-free: the ServerApp feeds the recorder.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from fedbackdoor.files import atomic_path
from fedbackdoor.server_step import RoundRecord

if TYPE_CHECKING:  # the ledger needs torch and Opacus; readers of run files do not
    from fedbackdoor.privacy import PrivacyLedger

#: Columns of ``metrics.csv``, in order. Accuracies are fractions in [0, 1].
COLUMNS: tuple[str, ...] = (
    "round",
    "main_acc",
    "main_loss",
    "backdoor_acc",
    "n_clients",
    "n_malicious",
    "n_rejected",
    "n_flagged",
    "det_tp",
    "det_fp",
    "det_tpr",
    "det_fpr",
    "mal_influence",
    "skipped",
    "diverged",
    "dp_epsilon",
    "san_removed",
    "san_poisoned",
    "san_precision",
    "san_recall",
    "seconds",
    "aggregate_seconds",
)

#: Columns of ``clients.csv``: one row per client and round, what the client measured besides
#: its weights (blank where it did not: DP-SGD, sanitization, gradient analysis). ``dp_epsilon``
#: is the client's spending so far at ``client_dp.delta`` (composed over its rounds by
#: :class:`~fedbackdoor.privacy.PrivacyLedger`). ``client_seconds`` is the client's own time for
#: the round, ``peak_rss_mb`` the peak resident memory of the process (the Ray actor or
#: SuperNode app) that trained it so far, ``gpu_peak_mb`` its peak CUDA memory in the round
#: (blank without a GPU), as BackFed logs them.
CLIENT_COLUMNS: tuple[str, ...] = (
    "round",
    "client",
    "malicious",
    "train_loss",
    "dp_noise_multiplier",
    "dp_sample_rate",
    "dp_steps",
    "dp_epsilon",
    "san_removed",
    "san_removed_poisoned",
    "san_poisoned",
    "grad_poison_norm",
    "grad_clean_norm",
    "grad_cosine",
    "grad_poison_norm_clipped",
    "grad_clean_norm_clipped",
    "grad_cosine_clipped",
    "client_seconds",
    "peak_rss_mb",
    "gpu_peak_mb",
)


@dataclass(frozen=True)
class ClientReport:
    """What one client reported in a round besides its weights (see :data:`CLIENT_COLUMNS`)."""

    client: int
    malicious: bool
    train_loss: float
    values: Mapping[str, float]


#: The columns of ``metrics.csv`` that measure time: everything else is reproducible from the
#: config and seed.
TIMING_COLUMNS: tuple[str, ...] = ("seconds", "aggregate_seconds")
#: The columns of ``clients.csv`` that measure the machine (time, memory), likewise.
CLIENT_MACHINE_COLUMNS: tuple[str, ...] = ("client_seconds", "peak_rss_mb", "gpu_peak_mb")


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else value


class MetricsWriter:
    """Appends one row per round to a CSV file, flushing after each row."""

    def __init__(
        self,
        path: str | Path,
        extra_columns: Sequence[str] = (),
        *,
        columns: Sequence[str] = COLUMNS,
        keep_through: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        columns = tuple(columns)
        # Extra columns (e.g. DBA's backdoor_acc_part<i>) go after backdoor_acc.
        at = columns.index("backdoor_acc") + 1 if "backdoor_acc" in columns else len(columns)
        extra = tuple(c for c in extra_columns if c not in columns)
        self.columns: tuple[str, ...] = columns[:at] + extra + columns[at:]
        kept = self._rows_through(keep_through) if keep_through is not None else []
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(kept)
        self._file: IO[str] = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)

    def _rows_through(self, last: int) -> list[dict[str, str]]:
        """The file's rows of rounds <= ``last`` (a resumed run keeps them as they are)."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as existing:
            reader = csv.DictReader(existing)
            if tuple(reader.fieldnames or ()) != self.columns:
                raise ValueError(f"{self.path}: its columns are not this run's")
            return [row for row in reader if int(row["round"]) <= last]

    def write(self, row: Mapping[str, object]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"unknown metrics columns {sorted(unknown)}")
        self._writer.writerow({k: _cell(row.get(k)) for k in self.columns})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def load_metrics(path: str | Path) -> pd.DataFrame:
    """A run's ``metrics.csv`` (or the run directory holding it) as a DataFrame."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}")
    return pd.read_csv(path)


#: A run directory's status file: ``{"status": "running" | "complete", "choices": {group:
#: option}, "overrides": [...], "num_rounds": int, "seconds": float (when complete)}``.
RUN_FILE = "run.json"


def write_run_status(run_dir: str | Path, **fields: object) -> Path:
    """Write (or update) ``run_dir/run.json`` atomically: a reader sees the old or the new file,
    never half of one. Fields given here replace those already in the file."""
    path = Path(run_dir) / RUN_FILE
    current = read_run_status(run_dir) or {}  # a corrupt file is replaced, not a crash
    current.update(fields)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return path


def is_complete(run_dir: Path, cfg: DictConfig) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly ``cfg``'s settings (a restarted sweep
    skips it; a half-finished one is run again from the start). The ``backend`` node is left
    out of the comparison: it says how the engine runs, not what is computed."""
    status = read_run_status(run_dir)
    saved = run_dir / "config.yaml"
    if status is None or status.get("status") != "complete" or not saved.exists():
        return False

    return experiment_settings(OmegaConf.load(saved)) == experiment_settings(cfg)


def experiment_settings(cfg: object) -> object:
    """A config as the data that decides what a run computes: resolved, compared as data (the
    same settings in another key order are the same run), without the ``backend`` node (Ray's
    address, cores, runs in flight change no result, so a run resumed with other backend
    settings is the same run)."""
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    if isinstance(container, dict):
        return {k: v for k, v in container.items() if k != "backend"}
    return container


def read_run_status(run_dir: str | Path) -> dict[str, object] | None:
    """``run_dir/run.json`` as a dict, or ``None`` if it is missing or unreadable."""
    path = Path(run_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ratio(numerator: pd.Series, denominator: pd.Series) -> float:
    """``sum(numerator) / sum(denominator)``, NaN when the denominator sums to 0."""
    den = float(denominator.sum())
    return float(numerator.sum()) / den if den > 0 else math.nan


def detection_totals(metrics: pd.DataFrame) -> dict[str, float]:
    """A run's detection over all its rounds: ``det_tp``, ``det_fp``, ``malicious`` and
    ``benign`` (clients sampled, over the rounds whose detection columns are filled),
    ``det_tpr`` = tp / malicious and ``det_fpr`` = fp / benign. All NaN when the defense
    flags nobody by design (no round has detection columns)."""
    trained = metrics[metrics["round"] >= 1]
    scored = trained[trained["det_tp"].notna()] if "det_tp" in trained else trained.iloc[:0]
    if not len(scored):
        return dict.fromkeys(
            ("det_tp", "det_fp", "malicious", "benign", "det_tpr", "det_fpr"), math.nan
        )
    malicious = scored["n_malicious"]
    benign = scored["n_clients"] - scored["n_malicious"]
    return {
        "det_tp": float(scored["det_tp"].sum()),
        "det_fp": float(scored["det_fp"].sum()),
        "malicious": float(malicious.sum()),
        "benign": float(benign.sum()),
        "det_tpr": ratio(scored["det_tp"], malicious),
        "det_fpr": ratio(scored["det_fp"], benign),
    }


def round_row(
    round_: int, evaluation: Mapping[str, float], record: RoundRecord | None, seconds: float
) -> dict[str, object]:
    """One row of ``metrics.csv``: the round's evaluation and its server record."""
    row: dict[str, object] = {"round": round_, **evaluation, "seconds": round(seconds, 3)}
    if record is None:  # round 0: the initial model, nobody trained
        row.update(n_clients=0, n_malicious=0, n_rejected=0, skipped=0)
        return row
    row.update(
        aggregate_seconds=round(record.aggregate_seconds, 4),
        n_clients=record.n_clients,
        n_malicious=record.n_malicious,
        n_rejected=record.n_rejected,
        n_flagged=record.n_flagged,
        mal_influence=record.influence,
        skipped=int(record.skipped is not None),
    )
    if record.detection is not None:
        d = record.detection
        row.update(det_tp=d.tp, det_fp=d.fp, det_tpr=d.tpr, det_fpr=d.fpr)
    return row


class RunRecorder:
    """Writes one run's files while it goes on, and its terminal lines.

    On creation: ``config.yaml`` (the resolved config) and ``run.json`` (``status: running``,
    ``num_rounds`` and ``meta``: the Hydra group ``choices`` and ``overrides``); then a
    ``metrics.csv`` row per round (:meth:`round`); at the end (:meth:`finish`) ``model.pt`` and
    ``run.json`` with ``status: complete``, the run's ``seconds``, its detection totals and the
    rounds that were skipped or diverged.

    Parameters
    ----------
    run_dir : Path
        The run's folder (created).
    cfg_yaml : str
        The resolved config as YAML.
    num_rounds : int
        Rounds after round 0.
    columns : sequence of str
        The evaluation's metric names (extra columns such as DBA's per-part accuracies).
    meta : mapping, optional
        More fields for ``run.json``.
    label : str, optional
        Starts every terminal line (runs in parallel).
    privacy : PrivacyLedger, optional
        With ``client_dp``: composes each client's DP-SGD spending over its rounds; its
        epsilons go to ``clients.csv`` (per client) and ``metrics.csv`` (``dp_epsilon``: the
        largest of any client so far).

    Every round also appends the clients' reports to ``clients.csv`` (:data:`CLIENT_COLUMNS`),
    and the round's sanitization totals to ``metrics.csv``, over the clients that sanitized:
    ``san_removed`` (samples the sanitizers dropped), ``san_poisoned`` (poisoned samples they
    were given), ``san_precision`` (share of the dropped that were poisoned) and
    ``san_recall`` (share of the poisoned that were dropped).
    """

    def __init__(
        self,
        run_dir: Path,
        cfg_yaml: str,
        *,
        num_rounds: int,
        columns: Sequence[str],
        meta: Mapping[str, object] | None = None,
        label: str | None = None,
        privacy: PrivacyLedger | None = None,
        resume_after: int | None = None,
        diverged: Sequence[int] = (),
        skipped: Sequence[int] = (),
    ) -> None:
        self.run_dir = run_dir
        self.privacy = privacy
        self.num_rounds = num_rounds
        self.lead = f"{label} " if label else ""
        self.started = time.perf_counter()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg_yaml)
        status: dict[str, object] = {"status": "running", "num_rounds": num_rounds}
        if resume_after is not None:
            status["resumed_after"] = resume_after
        write_run_status(run_dir, **status, **dict(meta or {}))
        # Resuming after round r keeps the rows through r and drops any written after it.
        self.writer = MetricsWriter(
            run_dir / "metrics.csv", extra_columns=columns, keep_through=resume_after
        )
        self.clients = MetricsWriter(
            run_dir / "clients.csv", columns=CLIENT_COLUMNS, keep_through=resume_after
        )
        self.diverged: list[int] = list(diverged)
        self.skipped: list[int] = list(skipped)

    def say(self, text: str) -> None:
        """A line on the terminal, with the run's label."""
        print(f"{self.lead}{text}", flush=True)

    def note(self, **fields: object) -> None:
        """More fields for ``run.json``."""
        write_run_status(self.run_dir, **fields)

    def round(
        self,
        round_: int,
        evaluation: Mapping[str, float],
        record: RoundRecord | None,
        seconds: float,
        clients: Sequence[ClientReport] = (),
    ) -> None:
        """Write the round's row (and its clients' rows) and say it: accuracies, clients,
        rejections, and whether the round was skipped or the model diverged."""
        row = round_row(round_, evaluation, record, seconds)
        row.update(self._client_rows(round_, clients))
        self.writer.write(row)
        extra = ""
        if record is not None:
            extra = f"  clients {record.n_clients} ({record.n_malicious} malicious)"
            if record.n_rejected:
                extra += f"  rejected {record.n_rejected}"
            if record.skipped is not None:
                extra += f"  SKIPPED, global model kept: {record.skipped}"
                self.skipped.append(round_)
        if evaluation.get("diverged"):
            extra += "  DIVERGED: the global model computes non-finite outputs"
            self.diverged.append(round_)
        self.say(
            f"round {round_:>3}/{self.num_rounds}  main_acc {evaluation['main_acc']:.4f}  "
            f"backdoor_acc {evaluation['backdoor_acc']:.4f}{extra}  {seconds:.2f}s"
        )

    def _client_rows(self, round_: int, clients: Sequence[ClientReport]) -> dict[str, object]:
        """Write the clients' rows; return the round's DP and sanitization columns."""
        removed = removed_poisoned = poisoned = 0.0
        sanitized = False
        for report in clients:
            values = {k: v for k, v in report.values.items() if k in CLIENT_COLUMNS}
            if self.privacy is not None and "dp_steps" in values:
                try:
                    values["dp_epsilon"] = self.privacy.spend(
                        report.client,
                        noise_multiplier=values.get("dp_noise_multiplier", math.nan),
                        sample_rate=values.get("dp_sample_rate", math.nan),
                        steps=int(values["dp_steps"]),
                    )
                except (ValueError, OverflowError) as exc:  # a broken report: said, not fatal
                    self.say(f"round {round_}: DP report of client {report.client} ignored: {exc}")
            if "san_removed" in values:
                sanitized = True
                removed += values["san_removed"]
                removed_poisoned += values.get("san_removed_poisoned", 0.0)
                poisoned += values.get("san_poisoned", 0.0)
            self.clients.write(
                {
                    "round": round_,
                    "client": report.client,
                    "malicious": int(report.malicious),
                    "train_loss": report.train_loss,
                    **values,
                }
            )
        out: dict[str, object] = {}
        if self.privacy is not None and round_ >= 1:
            out["dp_epsilon"] = self.privacy.max_epsilon()
        if sanitized:
            out.update(
                san_removed=removed,
                san_poisoned=poisoned,
                san_precision=removed_poisoned / removed if removed else math.nan,
                san_recall=removed_poisoned / poisoned if poisoned else math.nan,
            )
        return out

    def finish(self, state_dict: Mapping[str, object]) -> None:
        """Save the final global model (``model.pt``) and mark the run complete; say what a
        reader of the numbers must know (diverged or skipped rounds, detection totals)."""
        import torch  # noqa: PLC0415 (the recorder's other users need no torch)

        torch.save(dict(state_dict), self.run_dir / "model.pt")
        self.writer.close()
        self.clients.close()
        totals = detection_totals(load_metrics(self.writer.path))
        detection = None if math.isnan(totals["det_tp"]) else totals  # rule flags nobody
        self.note(
            status="complete",
            seconds=round(time.perf_counter() - self.started, 3),
            detection=detection,
            diverged_rounds=self.diverged,
            skipped_rounds=self.skipped,
        )
        if self.diverged:
            self.say(
                f"WARNING: the global model diverged (non-finite outputs) in "
                f"{len(self.diverged)} round(s), first {self.diverged[0]}: accuracies of those "
                "rounds count non-finite outputs as wrong"
            )
        if self.skipped:
            self.say(
                f"WARNING: the global model was not updated in {len(self.skipped)} round(s): "
                f"{self.skipped}"
            )
        if detection is not None:
            self.say(
                f"detection over the run: {detection['det_tp']:.0f} of "
                f"{detection['malicious']:.0f} malicious updates flagged "
                f"(TPR {detection['det_tpr']:.3f}), {detection['det_fp']:.0f} of "
                f"{detection['benign']:.0f} benign (FPR {detection['det_fpr']:.3f})"
            )

    def close(self) -> None:
        self.writer.close()
        self.clients.close()
