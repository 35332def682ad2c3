"""``fedbackdoor tune``: the search space from Hydra's grammar, the objectives, the Pareto front,
and (slow) a search that runs, resumes and survives a killed trial."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from fedbackdoor.results import pareto_mask
from fedbackdoor.tune import (
    Objectives,
    SearchError,
    check_keys,
    curve_resistance,
    parse_space,
    trial_overrides,
)

TINY = ["dataset=synthetic", "num_clients=4", "clients_per_round=2", "num_rounds=2"]


# --- the search space -------------------------------------------------------------------------


def test_sweeps_become_distributions_and_the_rest_stays_fixed() -> None:
    space = parse_space(
        [
            "lr=interval(0.01,0.2)",
            "local_epochs=range(1,5)",
            "defense=choice(clip,median)",
            "+defense.max_norm=tag(log,interval(0.1,5))",
            "batch_size=16,32",
            "seed=3",
            "attack.fraction=0.1",
        ]
    )

    assert space.fixed == ("seed=3", "attack.fraction=0.1")
    assert space.distributions == {
        "lr": FloatDistribution(0.01, 0.2),
        "local_epochs": IntDistribution(1, 4),  # Python's range: the end is excluded
        "defense": CategoricalDistribution(["clip", "median"]),
        "+defense.max_norm": FloatDistribution(0.1, 5.0, log=True),
        "batch_size": CategoricalDistribution([16, 32]),
    }


def test_stepped_and_float_ranges() -> None:
    space = parse_space(["a=range(2,11,4)", "b=range(0.1,0.4,0.1)", "c=range(3,4)"])

    assert space.distributions["a"] == IntDistribution(2, 10, step=4)
    # float steps: the values Hydra's own sweep gives (its accumulated steps reach 0.4),
    # without their binary noise (0.30000000000000004)
    (swept,) = OverridesParser.create().parse_overrides(["b=range(0.1,0.4,0.1)"])
    assert len(list(swept.sweep_iterator())) == 4
    assert space.distributions["b"] == CategoricalDistribution([0.1, 0.2, 0.3, 0.4])
    assert space.distributions["c"] == CategoricalDistribution([3])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=interval(0.2,0.01)", "lr=interval(0.2,0.01): empty interval"),
        ("lr=interval(0.1,0.1)", "empty interval"),
        ("local_epochs=range(5,1)", "local_epochs=range(5,1): empty range"),
        ("lr=tag(log,interval(0,1))", "needs a positive start"),
        ("lr=glob(*)", "only interval(), range() and choice()"),
        ("lr=interval(0.1", "cannot parse 'lr=interval(0.1'"),
        ("x=choice(null,1)", "NoneType is incompatible"),
    ],
)
def test_a_bad_search_entry_stops_with_one_line_naming_it(override: str, message: str) -> None:
    with pytest.raises(SearchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_space([override])


def test_a_key_searched_twice_or_nothing_searched_is_refused() -> None:
    with pytest.raises(SearchError, match="lr is searched twice"):
        parse_space(["lr=interval(0.1,0.2)", "+lr=choice(1,2)"])
    with pytest.raises(SearchError, match="nothing to search"):
        parse_space(["lr=0.1"])


def test_a_search_key_that_does_not_exist_is_named() -> None:
    space = parse_space(["lr=interval(0.01,0.2)", "no_such_key=interval(1,2)", *TINY])

    with pytest.raises(SearchError, match="search space key 'no_such_key'"):
        check_keys(space)


def test_a_group_option_that_does_not_exist_is_named() -> None:
    space = parse_space(["defense=choice(median,no_such_rule)", *TINY])

    # the first choice composes; every key is checked at its first value only
    check_keys(space)
    bad = parse_space(["defense=choice(no_such_rule,median)", *TINY])
    with pytest.raises(SearchError, match="search space key 'defense'.*no_such_rule"):
        check_keys(bad)


def test_trial_overrides_read_back_as_the_same_values() -> None:
    space = parse_space(
        ["lr=interval(0.01,0.2)", "defense=choice(clip,median)", "x=choice('a b',true,c)", "s=1"]
    )
    params = {"lr": 0.1 + 1e-17 + 0.023456789012345678, "defense": "median", "x": "a b"}

    overrides = trial_overrides(space, params)

    assert overrides[0] == "s=1"
    parsed = OverridesParser.create().parse_overrides(overrides[1:])
    assert [o.value() for o in parsed] == [params["lr"], "median", "a b"]
    for value in (True, "c"):
        (override,) = OverridesParser.create().parse_overrides(
            trial_overrides(space, {**params, "x": value})[3:]
        )
        assert override.value() == value and type(override.value()) is type(value)


# --- objectives -------------------------------------------------------------------------------


def test_a_fixed_attack_scores_final_main_and_backdoor_accuracy() -> None:
    objectives = Objectives()

    assert objectives.runs(["a=1"]) == {"run": ["a=1"]}
    assert objectives.directions == ("maximize", "minimize")
    assert objectives.score({"run": (0.8, 0.3)}) == ([0.8, 0.3], "")


def test_a_curve_runs_every_fraction_and_zero_and_scores_its_resistance() -> None:
    objectives = Objectives(curve=(0.4, 0.1, 0.2))
    finals = {
        "fraction0": (0.88, 0.01),
        "fraction0.1": (0.87, 0.02),
        "fraction0.2": (0.86, 0.03),
        "fraction0.4": (0.85, 0.04),
    }

    runs = objectives.runs(["a=1"])
    values, note = objectives.score(finals)

    assert list(runs) == ["fraction0", "fraction0.1", "fraction0.2", "fraction0.4"]
    assert runs["fraction0.2"] == ["a=1", "attack.fraction=0.2"]
    assert objectives.names == ("main_acc", "resistance")
    assert objectives.directions == ("maximize", "maximize")
    # a flat curve: resisted every fraction tried (the largest, a lower bound)
    assert values == [0.88, 0.4] and note == "resisted all"


@pytest.mark.parametrize(
    ("backdoor", "expected", "note"),
    [
        ([0.0, 0.01, 0.02, 0.03], 0.4, "resisted all"),
        ([0.0, 0.9, 0.95, 1.0], 0.0, "resisted none"),
    ],
)
def test_curves_the_fit_cannot_place_still_rank(
    backdoor: list[float], expected: float, note: str
) -> None:
    assert curve_resistance([0.0, 0.1, 0.2, 0.4], backdoor) == (expected, note)


def test_a_curve_that_rises_gets_the_fitted_resistance_point() -> None:
    fractions = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]
    backdoor = [0.01, 0.01, 0.02, 0.5, 0.98, 1.0]

    value, note = curve_resistance(fractions, backdoor)

    assert note == "" and 0.05 < value < 0.1


@pytest.mark.parametrize(
    ("curve", "resistance", "message"),
    [
        ((0.1,), "logistic", "at least two"),
        ((0.1, 1.5), "logistic", "in \\(0, 1\\]"),
        ((0.1, 0.1), "logistic", "repeated"),
        (None, "bogus", "--resistance 'bogus'"),
    ],
)
def test_bad_objectives_are_refused(
    curve: tuple[float, ...] | None, resistance: str, message: str
) -> None:
    with pytest.raises(SearchError, match=message):
        Objectives(curve=curve, resistance=resistance)


# --- the Pareto front -------------------------------------------------------------------------


def test_the_pareto_front_of_a_hand_made_set_of_trials() -> None:
    # (main accuracy up, backdoor accuracy down)
    values = [
        [0.90, 0.80],  # 0: best main accuracy -> front
        [0.85, 0.10],  # 1: front
        [0.80, 0.10],  # 2: dominated by 1 (same backdoor, less main)
        [0.60, 0.02],  # 3: lowest backdoor -> front
        [0.85, 0.10],  # 4: equal to 1 -> front with it
        [0.70, 0.50],  # 5: dominated by 1
        [np.nan, 0.0],  # 6: no value -> never on the front
    ]

    mask = pareto_mask(values, ("maximize", "minimize"))

    assert mask.tolist() == [True, True, False, True, True, False, False]
    both_up = pareto_mask([[1, 1], [2, 0], [0, 2], [1, 0]], ("maximize", "maximize"))
    assert both_up.tolist() == [True, True, True, False]


def test_the_pareto_front_is_optunas_and_ignores_order() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, size=(40, 2)).astype(float) / 5  # many ties
    study = optuna.create_study(directions=["maximize", "minimize"])
    for row in values:
        study.add_trial(optuna.trial.create_trial(values=list(row), params={}, distributions={}))

    mask = pareto_mask(values, ("maximize", "minimize"))
    order = rng.permutation(len(values))

    assert set(np.flatnonzero(mask)) == {t.number for t in study.best_trials}
    assert pareto_mask(values[order], ("maximize", "minimize")).tolist() == mask[order].tolist()


def test_pareto_mask_rejects_bad_shapes_and_directions() -> None:
    with pytest.raises(ValueError, match="must be \\[n, 2\\]"):
        pareto_mask([1.0, 2.0], ("maximize", "minimize"))
    with pytest.raises(ValueError, match="'up'"):
        pareto_mask([[1.0, 2.0]], ("up", "minimize"))


# --- a search, end to end (slow) --------------------------------------------------------------


def _tune(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fedbackdoor",
            "tune",
            "lr=interval(0.01,0.3)",
            *TINY,
            "attack=badnets",
            "attack.fraction=0.5",
            "--pruner",
            "none",
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=900,
    )


@pytest.mark.slow
def test_a_search_runs_resumes_and_asks_an_interrupted_trial_again(
    tmp_path: Path, data_cache: str
) -> None:
    out = tmp_path / "search"

    # Execute: two trials, then a killed process leaves a third running, then resume to four
    first = _tune(out, "--trials", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = pd.read_csv(out / "trials.csv")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/metrics.csv")}
    storage = f"sqlite:///{out / 'tune.db'}"
    study = optuna.load_study(study_name="fedbackdoor-tune", storage=storage)
    stuck = study.ask({"lr": FloatDistribution(0.01, 0.3)})  # as a killed process leaves it
    second = _tune(out, "--trials", "4")

    # Assert: the first search wrote its trials, runs, front and figure
    assert first.stdout.strip().splitlines()[-1] == str(out.resolve())
    trials = before[before["trial"] != "default"]
    assert trials["state"].tolist() == ["COMPLETE", "COMPLETE"]
    assert trials["lr"].between(0.01, 0.3).all()
    assert trials[["main_acc", "backdoor_acc"]].stack().between(0, 1).all()
    assert (before["trial"] == "default").sum() == 1  # the default config, for reference
    assert before["pareto"].dtype == bool and before["pareto"].any()
    assert (out / "pareto.png").is_file() and (out / "pareto.pdf").is_file()
    for folder in trials["runs"]:
        metrics = pd.read_csv(out / folder / "run" / "metrics.csv")
        assert len(metrics) == 3  # rounds 0-2: an ordinary run directory
    # Assert: the resumed search kept the finished trials and their runs untouched...
    assert second.returncode == 0, second.stderr[-3000:]
    after = pd.read_csv(out / "trials.csv").set_index("trial")
    for _, row in trials.iterrows():
        kept = after.loc[str(row["trial"])]
        assert kept["state"] == "COMPLETE" and kept["lr"] == row["lr"]
        assert kept["main_acc"] == row["main_acc"]
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp
    # ...marked the stuck trial failed and asked its configuration again
    stuck_row = after.loc[str(stuck.number)]
    assert stuck_row["state"] == "FAIL" and stuck_row["error"] == "interrupted"
    again = after[(after["lr"] == stuck.params["lr"]) & (after["state"] == "COMPLETE")]
    assert len(again) == 1
    assert (after["state"] != "REFERENCE").sum() == 4
    assert "interrupted: asked again" in second.stdout
    importance = pd.read_csv(out / "importance.csv")
    assert set(importance["param"]) == {"lr"}
    assert math.isclose(
        importance.loc[importance["objective"] == "main_acc", "importance"].sum(), 1.0
    )


@pytest.mark.slow
def test_trials_whose_config_is_invalid_fail_with_their_error_and_the_search_goes_on(
    tmp_path: Path, data_cache: str
) -> None:
    out = tmp_path / "search"

    result = subprocess.run(
        [
            sys.executable, "-m", "fedbackdoor", "tune", "batch_size=choice(0,-1)", *TINY,
            "--pruner", "none", "--out", str(out), "--trials", "2",
        ],
        capture_output=True, text=True, env={**os.environ}, timeout=900,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out / "trials.csv")
    failed = table[table["trial"] != "default"]
    assert failed["state"].tolist() == ["FAIL", "FAIL"]
    assert failed["error"].str.contains("invalid config").all()
    assert failed["error"].str.contains("batch_size").all()
    default = table[table["trial"] == "default"].iloc[0]
    assert default["state"] == "REFERENCE" and 0 <= default["main_acc"] <= 1
    assert not (out / "pareto.png").exists()  # nothing finished to draw


@pytest.mark.slow
def test_pruned_trials_are_marked_and_their_runs_stop_where_they_were_pruned(
    tmp_path: Path, data_cache: str
) -> None:
    out = tmp_path / "search"
    rounds = [o for o in TINY if not o.startswith("num_rounds")] + ["num_rounds=4"]

    # ASHA from round 1 with reduction factor 3: most trials after the first few stop early
    result = subprocess.run(
        [
            sys.executable, "-m", "fedbackdoor", "tune", "lr=tag(log,interval(0.001,0.5))",
            *rounds, "attack=badnets", "attack.fraction=0.5",
            "--pruner", "asha", "--out", str(out), "--trials", "6",
        ],
        capture_output=True, text=True, env={**os.environ}, timeout=900,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out / "trials.csv")
    pruned = table[table["state"] == "PRUNED"]
    assert len(pruned) >= 1 and (table["state"] == "COMPLETE").sum() >= 1
    for _, row in pruned.iterrows():
        status = json.loads((out / row["runs"] / "run" / "run.json").read_text())
        assert status["status"] == "pruned"
        assert status["pruned_round"] == row["pruned_round"] < 4
        metrics = pd.read_csv(out / row["runs"] / "run" / "metrics.csv")
        assert metrics["round"].tolist() == list(range(int(row["pruned_round"]) + 1))
        assert not row["pareto"] and math.isnan(row["main_acc"])
