"""``fedbackdoor tune``: which training configuration resists backdoors best?

Mithridates (Bagdasaryan & Shmatikov, "Mithridates: Auditing and Boosting Backdoor Resistance of
Machine Learning Pipelines", ACM CCS 2024) asks, after *how robust is my pipeline* (the
poisoning curve, :mod:`fedbackdoor.curves`), *which hyperparameters boost that robustness*: a
multi-objective search over the training configuration with main accuracy as one objective and
backdoor accuracy at a fixed poisoning level -- or the resistance point of each configuration's
own poisoning curve -- as the other. This module runs that search with Optuna over any config
keys, named the way sweeps name them (Hydra's override grammar)::

    fedbackdoor tune 'lr=interval(0.01,0.2)' 'local_epochs=range(1,5)' \\
        'defense=choice(clip,median)' 'defense.max_norm=tag(log,interval(0.1,5))' \\
        attack=badnets attack.fraction=0.1 --trials 40

* ``interval(a,b)`` is a float in ``[a, b]`` (log-uniform with ``tag(log, ...)``);
  ``range(a,b[,s])`` the integers (or numbers) of Python's ``range`` (``b`` excluded);
  ``choice(x,y)`` or ``x,y`` a categorical; anything else is fixed for every trial.
* **Objectives**: final main accuracy (up) and final backdoor accuracy (down); with
  ``--curve f1,f2,...`` each trial runs at attacker fractions ``0, f1, f2, ...`` and the
  objectives are the main accuracy without attackers (up) and the resistance point of the
  trial's poisoning curve (up; ``--resistance`` picks the method, see
  :func:`fedbackdoor.curves.resistance_point` and :func:`curve_resistance` for the curves that
  never rise or rise at once).
* **Runs** go to the shared simulation engine as a sweep's do (``backend.parallel_runs`` runs in
  flight; trials are asked in batches that fill them) and are ordinary run directories under
  ``DIR/runs/<params-hash>/`` (``fedbackdoor report DIR/runs`` reads them); a configuration
  proposed twice reuses its finished runs.
* **Pruning** (``--pruner median|asha|none``): Optuna cannot prune multi-objective trials
  (``Trial.report`` raises for them), so each trial has a twin in a single-objective study of
  the same storage that receives the main accuracy of the trial's main run (the attacked run;
  with ``--curve``, the run without attackers) after every round, and Optuna's
  ``MedianPruner`` (5 startup trials) or ``SuccessiveHalvingPruner`` (ASHA, reduction factor 3)
  decides on it from round ``num_rounds // 4`` on. A pruned trial's runs stop at once and say
  ``status: pruned`` in their ``run.json``; the trial is marked pruned.
* **Persistence**: the study lives in ``DIR/tune.db`` (Optuna's RDB storage, SQLite); the same
  command with the same ``--out`` resumes it: finished trials stay, trials that were running
  when the process died are marked failed ("interrupted") and their configurations asked
  again first (their finished runs are reused). ``--trials`` counts every trial the study
  holds.
* **Output** (rewritten after every batch): ``trials.csv`` (one row per trial and one for the
  default configuration: state, parameters, objective values, whether on the Pareto front,
  error, run folders), ``importance.csv`` (Optuna's fANOVA importance of each parameter for each
  objective) and ``pareto.png``/``.pdf`` (every finished trial a point, the front joined, the
  default configuration marked).

A search-space key that does not exist, a range that is empty or a study folder that holds
another search stops at once with one line naming it (:class:`SearchError`); a trial whose
config is invalid or whose run fails is recorded as failed with its error and the search goes
on.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    OverrideType,
    RangeSweep,
)
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from fedbackdoor.config import ConfigError, compose_run, validate
from fedbackdoor.curves import RESISTANCE_METHODS, resistance_point
from fedbackdoor.files import atomic_path
from fedbackdoor.results import pareto_mask
from fedbackdoor.run_files import is_complete, load_metrics, read_run_status

__all__ = [
    "DEFAULT_TRIALS",
    "Objectives",
    "SearchError",
    "Space",
    "curve_resistance",
    "parse_space",
    "trial_overrides",
    "tune",
]

DEFAULT_TRIALS = 40
STUDY = "fedbackdoor-tune"
#: The single-objective twin that carries the per-round main accuracy for the pruner.
PRUNING_STUDY = "fedbackdoor-tune-pruning"
#: Optuna's MedianPruner: trials that always run to the end before it prunes any.
STARTUP_TRIALS = 5
#: Share of the backdoor accuracy that counts as "learned" for curves the fit cannot place.
LEARNED = 0.5
#: The values Hydra's override grammar gives a sweep (categorical choices).
Choice = str | int | float | bool | None


class SearchError(ValueError):
    """The search cannot start: a bad search-space entry, objective or study folder."""


# --- the search space -------------------------------------------------------------------------


@dataclass(frozen=True)
class Space:
    """What a search varies and what it keeps fixed.

    Attributes
    ----------
    distributions : dict
        ``key -> optuna distribution``; the key as written (``+key`` adds one).
    fixed : tuple of str
        The overrides every trial gets, in the order given.
    """

    distributions: dict[str, BaseDistribution]
    fixed: tuple[str, ...]

    def describe(self) -> dict[str, str]:
        """The space as text, for the study's identity and the terminal."""
        return {k: repr(v) for k, v in self.distributions.items()} | {"fixed": " ".join(self.fixed)}


def _key(override: Override) -> str:
    prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(override.type, "")
    return prefix + override.key_or_group


def _scalar(value: object, line: str) -> Choice:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise SearchError(f"{line}: choices must be numbers, strings, booleans or null, got {value!r}")


def _distribution(override: Override) -> BaseDistribution:
    line = override.input_line or _key(override)
    sweep = override.value()
    tags: set[str] = set(getattr(sweep, "tags", None) or ())
    log = "log" in tags
    if isinstance(sweep, IntervalSweep):
        low, high = float(sweep.start or 0.0), float(sweep.end or 0.0)
        if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
            raise SearchError(f"{line}: empty interval (its start must be below its end)")
        if log and low <= 0:
            raise SearchError(f"{line}: a log interval needs a positive start")
        return FloatDistribution(low, high, log=log)
    if isinstance(sweep, RangeSweep):
        values = [_scalar(v, line) for v in override.sweep_iterator()]
        if not values:
            raise SearchError(f"{line}: empty range (Python's range: the end is excluded)")
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(ints) == len(values):
            step = int(sweep.step or 1)
            if log and step != 1:
                raise SearchError(f"{line}: a log range needs step 1")
            if log and ints[0] <= 0:
                raise SearchError(f"{line}: a log range needs a positive start")
            if len(ints) == 1:
                return CategoricalDistribution(ints)
            low, high = int(ints[0]), int(ints[-1])
            return IntDistribution(low, high, step=1 if log else step, log=log)
        # Float steps: the values range() gives, rounded off their binary noise.
        return CategoricalDistribution([float(f"{float(v or 0):.12g}") for v in values])
    if isinstance(sweep, ChoiceSweep):
        choices = [_scalar(v, line) for v in override.sweep_iterator()]
        if not choices:
            raise SearchError(f"{line}: no choices")
        if len(set(map(repr, choices))) != len(choices):
            raise SearchError(f"{line}: a choice is repeated")
        return CategoricalDistribution(choices)
    raise SearchError(f"{line}: only interval(), range() and choice() can be searched")


def parse_space(overrides: Sequence[str]) -> Space:
    """Split Hydra overrides into the searched keys (sweeps) and the fixed ones.

    Raises
    ------
    SearchError
        An override Hydra cannot parse, an empty interval or range, a key searched twice, a
        glob sweep, or nothing to search.
    """
    parser = OverridesParser.create()
    distributions: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for line in overrides:
        try:
            (override,) = parser.parse_overrides([line])
        except HydraException as exc:  # Hydra's reason: its last line before the link
            reasons = [r for r in str(exc).splitlines() if r.strip() and not r.startswith("See ")]
            reason = reasons[-1] if reasons else type(exc).__name__
            raise SearchError(f"cannot parse {line!r}: {reason}") from None
        if not override.is_sweep_override():
            fixed.append(line)
            continue
        key = _key(override)
        if key.lstrip("+") in {k.lstrip("+") for k in distributions}:
            raise SearchError(f"{line}: {key.lstrip('+')} is searched twice")
        distributions[key] = _distribution(override)
    if not distributions:
        raise SearchError(
            "nothing to search: give at least one key as interval(a,b), range(a,b) or "
            "choice(x,y), e.g. 'lr=interval(0.01,0.2)'"
        )
    return Space(distributions, tuple(fixed))


_PLAIN = re.compile(r"[A-Za-z0-9_./-]+")


def _value(value: object) -> str:
    """A parameter value as Hydra's grammar reads it back (floats exactly, by ``repr``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(space: Space, params: Mapping[str, object]) -> list[str]:
    """The overrides of one trial: the fixed ones, then each searched key's value."""
    return [*space.fixed, *(f"{key}={_value(params[key])}" for key in space.distributions)]


def _first_values(space: Space) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            out[key] = dist.choices[0]
        elif isinstance(dist, IntDistribution | FloatDistribution):
            out[key] = dist.low
    return out


def _compose(overrides: list[str]) -> tuple[DictConfig, dict[str, object]]:
    try:
        return compose_run(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise SearchError(str(exc).strip().splitlines()[0]) from None


def check_keys(space: Space, extra: Sequence[str] = ()) -> None:
    """Compose the config with every searched key at one of its values: a key that does not
    exist (or a group option that does not) stops the search, naming it."""
    _compose([*space.fixed, *extra])  # the fixed part alone first: its errors are its own
    for key, value in _first_values(space).items():
        try:
            _compose([*space.fixed, *extra, f"{key}={_value(value)}"])
        except SearchError as exc:
            raise SearchError(f"search space key {key.lstrip('+')!r}: {exc}") from None


# --- objectives -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objectives:
    """What a trial runs and what it is scored on.

    Attributes
    ----------
    curve : tuple of float, or None
        Attacker fractions of each trial's poisoning curve (a run at fraction 0 is added), or
        ``None``: one run at the configured attack.
    resistance : str
        The resistance-point method for curves (:data:`fedbackdoor.curves.RESISTANCE_METHODS`).
    """

    curve: tuple[float, ...] | None = None
    resistance: str = "logistic"

    def __post_init__(self) -> None:
        if self.resistance not in RESISTANCE_METHODS:
            raise SearchError(
                f"--resistance {self.resistance!r}: choose one of {', '.join(RESISTANCE_METHODS)}"
            )
        if self.curve is not None:
            if len(self.curve) < 2:
                raise SearchError(f"--curve {self.curve}: give at least two attacker fractions")
            if any(not 0 < f <= 1 for f in self.curve):
                raise SearchError(f"--curve {list(self.curve)}: fractions must be in (0, 1]")
            if len(set(self.curve)) != len(self.curve):
                raise SearchError(f"--curve {list(self.curve)}: a fraction is repeated")

    @property
    def names(self) -> tuple[str, str]:
        return ("main_acc", "backdoor_acc") if self.curve is None else ("main_acc", "resistance")

    @property
    def directions(self) -> tuple[str, str]:
        return ("maximize", "minimize") if self.curve is None else ("maximize", "maximize")

    def runs(self, overrides: list[str]) -> dict[str, list[str]]:
        """``name -> overrides`` of a trial's runs; the first is its main run (pruning)."""
        if self.curve is None:
            return {"run": overrides}
        fractions = (0.0, *sorted(self.curve))
        return {f"fraction{f:g}": [*overrides, f"attack.fraction={f!r}"] for f in fractions}

    def score(self, finals: Mapping[str, tuple[float, float]]) -> tuple[list[float], str]:
        """The objective values from each run's final ``(main_acc, backdoor_acc)``, and a note
        on how a curve's resistance was placed."""
        if self.curve is None:
            main, backdoor_acc = finals["run"]
            return [main, backdoor_acc], ""
        fractions = [0.0, *sorted(self.curve)]
        backdoor = [finals[f"fraction{f:g}"][1] for f in fractions]
        value, note = curve_resistance(fractions, backdoor, method=self.resistance)
        return [finals["fraction0"][0], value], note


def curve_resistance(
    fractions: Sequence[float], backdoor_acc: Sequence[float], *, method: str = "logistic"
) -> tuple[float, str]:
    """A trial's resistance point, always a number, so that every curve can be ranked.

    :func:`fedbackdoor.curves.resistance_point` by ``method``; where it says nothing (NaN):

    * the backdoor reached :data:`LEARNED` (0.5) at no attacked fraction: the largest fraction
      run (the pipeline resisted all of them; a lower bound), note ``"resisted all"``;
    * it reached 0.5 at every attacked fraction: 0 (it resisted none), note ``"resisted none"``;
    * otherwise the first fraction where it reached 0.5 (Mithridates' simple variant), note
      ``"first above 0.5"``.
    """
    value = resistance_point(fractions, backdoor_acc, method=method)  # type: ignore[arg-type]
    if math.isfinite(value):
        return float(value), ""
    attacked = [(f, a) for f, a in zip(fractions, backdoor_acc, strict=True) if f > 0]
    learned = [f for f, a in sorted(attacked) if a >= LEARNED]
    if not learned:
        return float(max(f for f, _ in attacked)), "resisted all"
    if len(learned) == len(attacked):
        return 0.0, "resisted none"
    return float(learned[0]), "first above 0.5"


# --- running trials ---------------------------------------------------------------------------


def _params_key(params: Mapping[str, object]) -> str:
    text = "\n".join(f"{k}={_value(params[k])}" for k in sorted(params))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _final(run_dir: Path) -> tuple[float, float]:
    last = load_metrics(run_dir / "metrics.csv").iloc[-1]
    return float(last["main_acc"]), float(last["backdoor_acc"])


@dataclass
class _Pending:
    """One trial in flight."""

    trial: optuna.Trial
    twin: optuna.Trial
    runs: dict[str, Path]
    jobs: dict[str, Any]  # name -> engine job (runs already complete have none)
    pruned: threading.Event
    error: str = ""


class _Search:
    def __init__(
        self,
        space: Space,
        objectives: Objectives,
        out: Path,
        *,
        sampler: str,
        pruner: str,
        seed: int,
        say: Callable[[str], None],
    ) -> None:
        self.space, self.objectives, self.out, self.say = space, objectives, out, say
        self.lock = threading.Lock()
        storage = f"sqlite:///{(out / 'tune.db').resolve()}"
        self.study = optuna.create_study(
            study_name=STUDY,
            storage=storage,
            directions=list(objectives.directions),  # type: ignore[arg-type]
            sampler=_sampler(sampler, seed),
            load_if_exists=True,
        )
        identity = {
            "space": space.describe(),
            "objectives": {"names": list(objectives.names), "curve": objectives.curve},
            "resistance": objectives.resistance,
        }
        saved = self.study.user_attrs.get("identity")
        if saved is None:
            self.study.set_user_attr("identity", _jsonable(identity))
        elif saved != _jsonable(identity):
            raise SearchError(
                f"{out} holds another search ({saved}); give another --out to start a new one"
            )
        self.twins = optuna.create_study(
            study_name=PRUNING_STUDY,
            storage=storage,
            direction="maximize",
            pruner=_pruner(pruner, space, objectives),
            load_if_exists=True,
        )
        self._recover()

    def _recover(self) -> None:
        """Trials left running by a killed process: failed ("interrupted"), asked again."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.params:
                self.study.enqueue_trial(dict(frozen.params), skip_if_exists=False)
            self.study._storage.set_trial_user_attr(  # noqa: SLF001 (no public API for this)
                frozen._trial_id,
                "error",
                "interrupted",  # noqa: SLF001
            )
            self.study._storage.set_trial_state_values(  # noqa: SLF001
                frozen._trial_id,
                TrialState.FAIL,  # noqa: SLF001
            )
            self.say(f"trial {frozen.number} was interrupted: asked again")
        for frozen in self.twins.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.twins._storage.set_trial_state_values(  # noqa: SLF001
                frozen._trial_id,
                TrialState.FAIL,  # noqa: SLF001
            )

    def finished(self) -> int:
        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return len(self.study.get_trials(deepcopy=False, states=done))

    # -- one trial's runs -----------------------------------------------------------------

    def _submit(
        self,
        overrides: list[str],
        folder: Path,
        on_main_round: Callable[[int, Mapping[str, float]], bool] | None,
    ) -> tuple[dict[str, Path], dict[str, Any]]:
        from fedbackdoor.fl.simulation import shared_engine

        runs: dict[str, Path] = {}
        jobs: dict[str, Any] = {}
        for i, (name, run_overrides) in enumerate(self.objectives.runs(overrides).items()):
            cfg, meta = _compose(run_overrides)
            validate(cfg)
            run_dir = folder / name
            runs[name] = run_dir
            if is_complete(run_dir, cfg):
                continue
            engine = shared_engine(cfg)
            callback = on_main_round if i == 0 else None
            label = f"[{folder.name}/{name}]"
            jobs[name] = (engine, engine.submit(cfg, run_dir, meta, label=label, on_round=callback))
        return runs, jobs

    def _wait(self, runs: dict[str, Path], jobs: dict[str, Any]) -> str:
        """Wait for a trial's runs; the first error, or ``""``."""
        error = ""
        for name, (engine, job) in jobs.items():
            try:
                engine.wait(job)  # a replaced engine served its queued jobs before it closed
            except Exception as exc:  # noqa: BLE001 (a failed run fails its trial only)
                error = error or f"{runs[name]}: {exc!r}"
        return error

    def default(self) -> dict[str, object]:
        """The configuration without the searched keys: its runs and scores (a reference)."""
        folder = self.out / "runs" / "default"
        row: dict[str, object] = {"trial": "default", "state": "REFERENCE"}
        try:
            runs, jobs = self._submit(list(self.space.fixed), folder, None)
            row["error"] = self._wait(runs, jobs)
            if not row["error"]:
                values, note = self.objectives.score({n: _final(d) for n, d in runs.items()})
                row.update(zip(self.objectives.names, values, strict=True), note=note)
            row["runs"] = str(folder.relative_to(self.out))
        except (ConfigError, SearchError) as exc:
            row["error"] = str(exc)
        return row

    def batch(self, size: int) -> None:
        """Ask ``size`` trials, run them together, tell their outcomes."""
        pending: list[_Pending] = []
        for _ in range(size):
            trial = self.study.ask(self.space.distributions)
            twin = self.twins.ask()
            trial.set_user_attr("pruning_trial", twin.number)
            item = _Pending(trial, twin, {}, {}, threading.Event())
            overrides = trial_overrides(self.space, trial.params)
            folder = self.out / "runs" / _params_key(trial.params)
            trial.set_user_attr("runs", str(folder.relative_to(self.out)))
            try:
                item.runs, item.jobs = self._submit(overrides, folder, self._pruning(item))
            except (ConfigError, SearchError) as exc:
                item.error = f"invalid config: {exc}"
            pending.append(item)
        for item in pending:
            if not item.error:
                item.error = self._wait(item.runs, item.jobs)
            self._tell(item)

    def _pruning(self, item: _Pending) -> Callable[[int, Mapping[str, float]], bool]:
        def on_round(round_: int, evaluation: Mapping[str, float]) -> bool:
            with self.lock:
                if item.pruned.is_set():
                    return True
                value = float(evaluation.get("main_acc", math.nan))
                if not math.isfinite(value):
                    return False
                item.twin.report(value, round_)
                if item.twin.should_prune():
                    item.pruned.set()
                    item.trial.set_user_attr("pruned_round", round_)
                    return True
            return False

        return on_round

    def _tell(self, item: _Pending) -> None:
        trial, twin = item.trial, item.twin
        statuses = {n: (read_run_status(d) or {}).get("status") for n, d in item.runs.items()}
        if item.error:
            trial.set_user_attr("error", item.error)
            self.study.tell(trial, state=TrialState.FAIL)
            self.twins.tell(twin, state=TrialState.FAIL)
            self.say(f"trial {trial.number} failed: {item.error}")
            return
        if item.pruned.is_set() or "pruned" in statuses.values():
            self.study.tell(trial, state=TrialState.PRUNED)
            self.twins.tell(twin, state=TrialState.PRUNED)
            self.say(f"trial {trial.number} pruned ({_params_text(trial.params)})")
            return
        values, note = self.objectives.score({n: _final(d) for n, d in item.runs.items()})
        if note:
            trial.set_user_attr("note", note)
        self.study.tell(trial, values)
        self.twins.tell(twin, values[0])
        shown = ", ".join(
            f"{n} {v:.4g}" for n, v in zip(self.objectives.names, values, strict=True)
        )
        self.say(f"trial {trial.number}: {shown} ({_params_text(trial.params)})")

    # -- outputs --------------------------------------------------------------------------

    def table(self, default: Mapping[str, object] | None) -> pd.DataFrame:
        names = self.objectives.names
        rows: list[dict[str, object]] = []
        for frozen in self.study.get_trials(deepcopy=False):
            row: dict[str, object] = {"trial": frozen.number, "state": frozen.state.name}
            row.update(frozen.params)
            if frozen.values is not None:
                row.update(zip(names, frozen.values, strict=True))
            row["pruned_round"] = frozen.user_attrs.get("pruned_round")
            row["note"] = frozen.user_attrs.get("note", "")
            row["error"] = frozen.user_attrs.get("error", "")
            row["runs"] = frozen.user_attrs.get("runs", "")
            rows.append(row)
        if default is not None:
            rows.append(dict(default))
        table = pd.DataFrame(rows)
        for name in names:
            if name not in table:
                table[name] = np.nan
        done = (table["state"] == "COMPLETE").to_numpy()
        front = np.zeros(len(table), dtype=bool)
        if done.any():
            values = table.loc[done, list(names)].to_numpy(dtype=float)
            front[done] = pareto_mask(values, self.objectives.directions)
        table.insert(2, "pareto", front)
        return table

    def importances(self) -> pd.DataFrame:
        rows = []
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        for i, name in enumerate(self.objectives.names):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = optuna.importance.get_param_importances(
                        self.study, evaluator=evaluator, target=_objective(i)
                    )
            except (RuntimeError, ValueError) as exc:  # too few finished trials
                self.say(f"importance of the parameters for {name}: not computed ({exc})")
                continue
            rows += [{"objective": name, "param": k, "importance": v} for k, v in found.items()]
        return pd.DataFrame(rows, columns=["objective", "param", "importance"])

    def write(self, default: Mapping[str, object] | None) -> pd.DataFrame:
        from fedbackdoor.plots import plot_pareto  # matplotlib only where figures are drawn

        table = self.table(default)
        with atomic_path(self.out / "trials.csv") as tmp:
            table.to_csv(tmp, index=False)
        completed = (table["state"] == "COMPLETE").sum()
        if completed >= 2:
            importance = self.importances()
            with atomic_path(self.out / "importance.csv") as tmp:
                importance.to_csv(tmp, index=False)
        main, other = self.objectives.names
        try:
            plot_pareto(
                table,
                self.out / "pareto",
                x=other,
                y=main,
                maximize_x=self.objectives.directions[1] == "maximize",
            )
        except Exception as exc:  # noqa: BLE001 (a figure must not cost the search)
            self.say(f"could not draw {self.out / 'pareto.png'}: {exc!r}")
        return table


def _objective(index: int) -> Callable[[FrozenTrial], float]:
    """One objective of a multi-objective trial, as Optuna's importance evaluators take it."""

    def value(trial: FrozenTrial) -> float:
        assert trial.values is not None  # only finished trials are evaluated
        return float(trial.values[index])

    return value


def _params_text(params: Mapping[str, object]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in params.items())


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    raise SearchError(f"--sampler {name!r}: choose tpe or nsga2")


def _pruner(name: str, space: Space, objectives: Objectives) -> optuna.pruners.BasePruner:
    del objectives
    rounds = int(_compose(list(space.fixed))[0].num_rounds)
    warmup = max(1, rounds // 4)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=warmup)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"--pruner {name!r}: choose median, asha or none")


def tune(
    overrides: Sequence[str],
    *,
    out: Path,
    trials: int = DEFAULT_TRIALS,
    objectives: Objectives | None = None,
    sampler: Literal["tpe", "nsga2"] = "tpe",
    pruner: Literal["median", "asha", "none"] = "median",
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run (or resume) a search; return the trials table (also in ``out/trials.csv``).

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides: sweeps (``interval``, ``range``, ``choice``) are searched, the rest
        fixed (see the module docstring).
    out : Path
        The study folder: ``tune.db``, ``runs/``, ``trials.csv``, ``importance.csv``,
        ``pareto.png``/``.pdf``. The same folder resumes the study.
    trials : int
        Trials the study should hold when done (finished, pruned or failed).
    objectives : Objectives
        Fixed attack (default) or a poisoning curve per trial.
    sampler, pruner, seed :
        Optuna's TPE (multi-objective) or NSGA-II (population 8) seeded with ``seed``; the
        pruner (module docstring).

    Raises
    ------
    SearchError
        Before any run, for a bad search space, objective or study folder.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SearchError(f"--trials {trials!r} must be an integer >= 1")
    objectives = objectives or Objectives()
    space = parse_space(overrides)
    if objectives.curve is not None:
        for line in (*space.fixed, *space.distributions):
            if line.lstrip("+").split("=")[0] == "attack.fraction":
                raise SearchError(
                    f"{line}: --curve sets attack.fraction for each run; drop it from the search"
                )
    check_keys(space)
    base, _ = _compose(list(space.fixed))
    validate(base)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = _Search(space, objectives, out, sampler=sampler, pruner=pruner, seed=seed, say=say)
    per_batch = max(1, int(base.backend.get("parallel_runs") or 1) // len(objectives.runs([])))
    say(
        f"tune: {out}: {search.finished()} of {trials} trials done; searching "
        + ", ".join(f"{k} {v}" for k, v in space.describe().items() if k != "fixed")
    )
    from fedbackdoor.fl.simulation import close_shared_engine

    try:
        default = search.default()
        search.write(default)
        while (left := trials - search.finished()) > 0:
            search.batch(min(per_batch, left))
            search.write(default)
        table = search.write(default)
    except BaseException:  # do not wait for runs in flight: the process is failing
        close_shared_engine(wait=False)
        raise
    close_shared_engine()
    return table


def main(argv: Sequence[str]) -> None:
    """``fedbackdoor tune [options] OVERRIDES``; prints the trials' front, the folder last."""
    parser = argparse.ArgumentParser(
        prog="fedbackdoor tune",
        description="Search the config for the settings that resist backdoors best "
        "(Mithridates' boosting search): main accuracy up, backdoor accuracy down or "
        "resistance point up. Searched keys as Hydra sweeps: 'lr=interval(0.01,0.2)', "
        "'local_epochs=range(1,5)', 'defense=choice(clip,median)'; other overrides are fixed.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: sweeps are searched")
    parser.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        help="trials the study holds when done: finished, pruned or failed (default %(default)s)",
    )
    parser.add_argument("--curve", help="attacker fractions f1,f2,... of each trial's curve")
    parser.add_argument("--resistance", default="logistic", help="|".join(RESISTANCE_METHODS))
    parser.add_argument("--sampler", default="tpe", help="tpe | nsga2")
    parser.add_argument("--pruner", default="median", help="median | asha | none")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--out", type=Path, help="study folder (the same folder resumes)")
    args = parser.parse_args(list(argv))
    from fedbackdoor.config import normalize_overrides

    out = args.out or Path("outputs") / "tune" / pd.Timestamp.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        curve = None
        if args.curve:
            try:
                curve = tuple(float(f) for f in args.curve.split(","))
            except ValueError:
                raise SearchError(
                    f"--curve {args.curve!r}: give numbers, e.g. 0.05,0.1,0.2"
                ) from None
        table = tune(
            normalize_overrides(list(args.overrides)),
            out=out,
            trials=args.trials,
            objectives=Objectives(curve=curve, resistance=args.resistance),
            sampler=args.sampler,
            pruner=args.pruner,
            seed=args.seed,
        )
    except (SearchError, ConfigError) as exc:
        print(f"fedbackdoor tune: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    front = table[table["pareto"]]
    print(
        f"{int((table['state'] == 'COMPLETE').sum())} trials complete, "
        f"{int((table['state'] == 'PRUNED').sum())} pruned, "
        f"{int((table['state'] == 'FAIL').sum())} failed; Pareto front:"
    )
    print(
        front.drop(columns=["pareto", "error", "pruned_round"], errors="ignore").to_string(
            index=False
        )
    )
    print(out.resolve(), flush=True)
