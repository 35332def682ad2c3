from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedbackdoor.results import (
    RUN_CONSTANTS,
    SUMMARY_METRICS,
    SkippedRunWarning,
    find_runs,
    gather_runs,
    summarize,
)
from fedbackdoor.run_files import (
    COLUMNS,
)

# --- many runs -> one tidy table ---------------------------------------------------------------


def run_config(*, fraction: float, seed: int, defense: str = "fedavg", num_rounds: int = 3) -> dict:
    """A config shaped like the resolved run config (groups nested, Hydra's _target_s)."""
    target = "clustering.dnc" if defense == "dnc" else "averaging.mean"
    rule: dict[str, object] = {"_target_": f"fedbackdoor.defenses.{target}"}
    defense_node: dict[str, object] = {"rule": rule, "pre": [], "post": []}
    if defense == "dnc":
        rule["f"] = 1
        defense_node["f"] = 1
    update = {"_target_": "fedbackdoor.attacks.boost.scale", "_partial_": True, "boost": 3.0}
    if fraction == 0:
        update = {"_target_": "fedbackdoor.attacks.boost.identity", "_partial_": True}
    return {
        "dataset": {"name": "synthetic", "image_size": [12, 12]},
        "attack": {
            "fraction": fraction,
            "per_round": None,
            "start_round": 1,
            "end_round": None,
            "poison_ratio": 0.5 if fraction else 0.0,
            "target_label": 0,
            "trigger": {"_target_": "fedbackdoor.attacks.triggers.checkerboard", "size": 4},
            "update": update,
        },
        "defense": defense_node,
        "num_rounds": num_rounds,
        "num_clients": 10,
        "clients_per_round": 5,
        "seed": seed,
        "lr": 0.05,
    }


def write_run(
    run_dir: Path,
    config: dict,
    rows: dict[str, list],
    *,
    status: str | None = "complete",
    choices: dict[str, str] | None = None,
) -> Path:
    """A run folder as `fedbackdoor run` leaves it: config.yaml, metrics.csv, run.json."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    table = pd.DataFrame({"round": range(len(rows["main_acc"])), **rows})
    table.reindex(columns=[*COLUMNS, *(c for c in table if c not in COLUMNS)]).to_csv(
        run_dir / "metrics.csv", index=False
    )
    if status is not None:
        info = {"status": status, "choices": choices or {}, "overrides": [], "num_rounds": 3}
        (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def choices(attack: str, defense: str) -> dict[str, str]:
    update = "none" if attack == "none" else "scaling"
    return {"dataset": "synthetic", "model": "cnn", "partition": "iid", "attack": attack,
            "defense": defense, "attack/update": update, "hydra/launcher": "basic"}  # fmt: skip


NAN = math.nan

#: run -> (attack, defense, fraction, seed, status, rows)
SWEEP: dict[str, tuple[str, str, float, int, str, dict[str, list]]] = {
    "0": ("badnets", "fedavg", 0.1, 0, "complete", {
        "main_acc": [0.1, 0.5, 0.7, 0.8], "backdoor_acc": [0.0, 0.2, 0.6, 0.9],
        "n_clients": [0, 5, 5, 5], "n_malicious": [0, 1, 0, 2],
        "seconds": [0.5, 2.0, 3.0, 4.0]}),
    "1": ("none", "fedavg", 0.0, 0, "complete", {
        "main_acc": [0.1, 0.55, 0.75, 0.85], "backdoor_acc": [0.0, 0.01, 0.02, 0.01],
        "n_clients": [0, 5, 5, 5], "n_malicious": [0, 0, 0, 0],
        "seconds": [0.5, 1.0, 1.0, 1.0]}),
    "2": ("badnets", "dnc", 0.1, 0, "complete", {
        "main_acc": [0.1, 0.5, 0.7, 0.78], "backdoor_acc": [0.0, 0.1, 0.2, 0.3],
        "n_clients": [0, 5, 5, 5], "n_malicious": [0, 1, 2, 0],
        "det_tp": [NAN, 1, 1, 0], "det_fp": [NAN, 0, 1, 1],
        "seconds": [0.5, 1.0, 2.0, 3.0], "aggregate_seconds": [NAN, 0.1, 0.2, 0.3]}),
    "3": ("badnets", "fedavg", 0.1, 1, "running", {  # stopped after round 1
        "main_acc": [0.1, 0.4], "backdoor_acc": [0.0, 0.3],
        "n_clients": [0, 5], "n_malicious": [0, 1], "seconds": [0.5, 1.5]}),
}  # fmt: skip


def make_sweep(root: Path) -> Path:
    """Four runs (one half-finished) and a folder whose metrics.csv is empty, as in a sweep."""
    for name, (attack, defense, fraction, seed, status, rows) in SWEEP.items():
        config = run_config(fraction=fraction, seed=seed, defense=defense)
        write_run(root / name, config, rows, status=status, choices=choices(attack, defense))
    broken = root / "4"
    broken.mkdir()
    (broken / "config.yaml").write_text(yaml.safe_dump(run_config(fraction=0.2, seed=0)))
    (broken / "metrics.csv").write_text("")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_gather_runs_makes_one_row_per_run_and_round(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep")

    with pytest.warns(SkippedRunWarning, match=r"sweep/4: unreadable metrics.csv"):
        table = gather_runs(root)

    assert list(table.columns) == [
        "run", "complete", "dataset", "model", "partition", "attack", "defense",
        "attack.update",  # choices, '/' -> '.'; hydra/* left out
        "attack.fraction", "seed", "attack.start_round", "attack.end_round",  # always there
        "attack.poison_ratio", "attack.update.boost", "defense.f",  # differ (not defense.rule.f:
        # an argument of an instantiable node named like the group's own setting)
        *COLUMNS, *RUN_CONSTANTS,  # the run's own numbers from run.json last
    ]  # fmt: skip
    assert table["run"].tolist() == ["0"] * 4 + ["1"] * 4 + ["2"] * 4 + ["3"] * 2
    assert table["round"].tolist() == [0, 1, 2, 3] * 3 + [0, 1]
    by_run = table.groupby("run").first()
    assert by_run["complete"].tolist() == [True, True, True, False]
    assert by_run["attack"].tolist() == ["badnets", "none", "badnets", "badnets"]
    assert by_run["attack.update"].tolist() == ["scaling", "none", "scaling", "scaling"]
    assert by_run["attack.fraction"].tolist() == [0.1, 0.0, 0.1, 0.1]
    assert by_run["seed"].tolist() == [0, 0, 0, 1]
    assert by_run["defense.f"].fillna(-1).tolist() == [-1, -1, 1, -1]  # only dnc has f
    assert table["attack.end_round"].isna().all()
    assert table.loc[table["run"] == "2", "det_tp"].tolist()[1:] == [1, 1, 0]
    assert table["main_acc"].tolist()[:4] == [0.1, 0.5, 0.7, 0.8]


def test_gather_runs_keeps_extra_metrics_columns(tmp_path: Path) -> None:
    config = run_config(fraction=0.1, seed=0)
    rows = {"main_acc": [0.1, 0.5], "backdoor_acc": [0.0, 0.4], "backdoor_acc_part0": [0.0, 0.7]}
    write_run(tmp_path / "dba", config, rows, choices=choices("dba", "fedavg"))
    write_run(tmp_path / "plain", config, rows={"main_acc": [0.1], "backdoor_acc": [0.0]})

    table = gather_runs(tmp_path)

    assert "backdoor_acc_part0" in table.columns
    assert table["backdoor_acc_part0"].tolist()[:2] == [0.0, 0.7]
    assert table.loc[table["run"] == "plain", "backdoor_acc_part0"].isna().all()
    assert table.loc[table["run"] == "plain", "attack"].isna().all()  # no choices known


def test_a_run_without_run_json_is_never_complete(tmp_path: Path) -> None:
    # Every round is there, but nothing says the run ended: it may have been killed after
    # writing its last row and before saving its model.
    rows = {"main_acc": [0.1, 0.5, 0.6, 0.7], "backdoor_acc": [0.0] * 4}
    write_run(tmp_path / "full", run_config(fraction=0.1, seed=0), rows, status=None)

    table = gather_runs(tmp_path).groupby("run").first()

    assert table["complete"].to_dict() == {"full": False}


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"metrics.csv": "round,main_acc\n0,0.1\n"}, "no config.yaml"),
        ({"config.yaml": "a: [1, 2\n", "metrics.csv": "round\n0\n"}, "unreadable config.yaml"),
        (
            {"config.yaml": "seed: 0\n", "metrics.csv": "main_acc\n0.1\n"},
            "metrics.csv has no 'round'",
        ),
        (
            {"config.yaml": "seed: 0\n", "metrics.csv": "round,main_acc\n"},
            "metrics.csv holds no round",
        ),
    ],
)
def test_unreadable_run_folders_are_skipped_with_a_warning(
    tmp_path: Path, files: dict[str, str], reason: str
) -> None:
    good = {"main_acc": [0.1], "backdoor_acc": [0.0]}
    write_run(tmp_path / "good", run_config(fraction=0.1, seed=0, num_rounds=0), good)
    (tmp_path / "bad").mkdir()
    for name, text in files.items():
        (tmp_path / "bad" / name).write_text(text)

    with pytest.warns(SkippedRunWarning, match=f"bad: {reason}"):
        table = gather_runs(tmp_path)

    assert table["run"].unique().tolist() == ["good"]


def test_find_runs_sorts_sweep_jobs_naturally(tmp_path: Path) -> None:
    for name in ["10", "2", "1/nested"]:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "metrics.csv").write_text("round\n0\n")
    (tmp_path / "report").mkdir()  # no metrics.csv: not a run

    runs = find_runs(tmp_path)

    assert [r.relative_to(tmp_path).as_posix() for r in runs] == ["1/nested", "2", "10"]


def test_summarize_by_hand(tmp_path: Path) -> None:
    with pytest.warns(SkippedRunWarning):
        rounds = gather_runs(make_sweep(tmp_path))

    summary = summarize(rounds).set_index("run")

    assert list(summary.columns[-len(SUMMARY_METRICS) - 1 :]) == [*SUMMARY_METRICS, "complete"]
    assert "attack.fraction" in summary.columns and "round" not in summary.columns
    assert summary["final_main_acc"].tolist() == [0.8, 0.85, 0.78, 0.4]
    assert summary["final_backdoor_acc"].tolist() == [0.9, 0.01, 0.3, 0.3]
    assert summary["peak_backdoor_acc"].tolist() == [0.9, 0.02, 0.3, 0.3]
    # run 1 (attack=none, fraction 0, same defense and seed) is run 0's baseline; dnc (run 2)
    # and seed 1 (run 3) have none
    assert summary.loc["0", "main_acc_drop"] == pytest.approx(0.85 - 0.8)
    assert summary.loc["1", "main_acc_drop"] == 0.0
    assert summary[["main_acc_drop"]].loc[["2", "3"]].isna().all().all()
    assert summary["rounds_to_threshold"].fillna(-1).tolist() == [2, -1, -1, -1]
    # dnc flagged 1 of 1, 1 of 2, 0 of 0 attackers; 0 of 4, 1 of 3, 1 of 5 benign clients
    assert summary.loc["2", "det_tpr"] == pytest.approx(2 / 3)
    assert summary.loc["2", "det_fpr"] == pytest.approx(2 / 12)
    assert summary[["det_tpr", "det_fpr"]].loc[["0", "1", "3"]].isna().all().all()
    assert summary["seconds_per_round"].tolist() == [3.0, 1.0, 2.0, 1.5]  # round 0 left out
    # dnc's server step: 0.6 s of the 6 s of its rounds; the others did not log it
    assert summary.loc["2", "aggregate_share"] == pytest.approx(0.1)
    assert summary["aggregate_share"].loc[["0", "1", "3"]].isna().all()
    assert summary["rounds"].tolist() == [3, 3, 3, 1]
    assert summary["complete"].tolist() == [True, True, True, False]


def test_summarize_threshold_and_incomplete_baselines(tmp_path: Path) -> None:
    with pytest.warns(SkippedRunWarning):
        rounds = gather_runs(make_sweep(tmp_path))
    # the baseline still running: no final main accuracy to compare with
    rounds.loc[rounds["run"] == "1", "complete"] = False

    summary = summarize(rounds, threshold=0.25).set_index("run")

    assert summary["rounds_to_threshold"].fillna(-1).tolist() == [2, -1, 3, 1]
    assert summary["main_acc_drop"].isna().all()
    with pytest.raises(ValueError, match="threshold"):
        summarize(rounds, threshold=50)


def test_how_the_engine_ran_identifies_no_run(tmp_path: Path) -> None:
    # Prepare: a baseline and an attacked run, one of them run with two runs in flight
    rows = {"main_acc": [0.1, 0.8], "backdoor_acc": [0.0, 0.9]}
    clean = run_config(fraction=0.0, seed=0) | {"backend": {"parallel_runs": 1}}
    attacked = run_config(fraction=0.1, seed=0) | {"backend": {"parallel_runs": 2}}
    write_run(tmp_path / "0", clean, rows, choices=choices("none", "fedavg"))
    write_run(tmp_path / "1", attacked, {**rows, "main_acc": [0.1, 0.7]},
              choices=choices("badnets", "fedavg"))  # fmt: skip

    # Execute
    summary = summarize(gather_runs(tmp_path)).set_index("run")

    # Assert: no backend column, and the attacked run finds its baseline
    assert not [c for c in summary.columns if c.startswith("backend")]
    assert summary.loc["1", "main_acc_drop"] == pytest.approx(0.1)


def test_a_non_number_in_a_metric_column_skips_the_run_naming_file_and_column(
    tmp_path: Path,
) -> None:
    rows = {"main_acc": [0.1, 0.5, 0.6], "backdoor_acc": [0.0, 0.2, 0.3]}
    write_run(tmp_path / "good", run_config(fraction=0.1, seed=0), rows)
    bad = write_run(tmp_path / "bad", run_config(fraction=0.1, seed=1), rows)
    metrics = pd.read_csv(bad / "metrics.csv")
    metrics["main_acc"] = ["0.1", "0.5", "abc"]
    metrics.to_csv(bad / "metrics.csv", index=False)

    with pytest.warns(SkippedRunWarning) as caught:
        table = gather_runs(tmp_path)

    assert [str(w.message) for w in caught if w.category is SkippedRunWarning] == [
        f"skipped {bad}: metrics.csv column 'main_acc' holds a non-number ('abc' in round 2)"
    ]
    assert table["run"].unique().tolist() == ["good"]
    assert summarize(table)["final_main_acc"].tolist() == [0.6]  # the report goes on


def test_a_last_row_cut_short_is_dropped_and_the_run_is_incomplete(tmp_path: Path) -> None:
    # Prepare: every round written and run.json says complete, but the file was cut while its
    # last row was written ("3,0.7" of "3,0.7,,0.4,...")
    rows = {"main_acc": [0.1, 0.5, 0.6, 0.7], "backdoor_acc": [0.0, 0.2, 0.3, 0.4]}
    run = write_run(tmp_path / "cut", run_config(fraction=0.1, seed=0), rows)
    text = (run / "metrics.csv").read_text().rstrip("\n")
    (run / "metrics.csv").write_text(text[: text.rindex("\n") + 6])

    # Execute
    with pytest.warns(SkippedRunWarning) as caught:
        table = gather_runs(tmp_path)

    # Assert
    assert [str(w.message) for w in caught if w.category is SkippedRunWarning] == [
        f"{run / 'metrics.csv'}: dropped its last row, cut short (2 of {len(COLUMNS)} fields); "
        "the run counts as incomplete"
    ]
    assert table["round"].tolist() == [0, 1, 2]
    assert table["main_acc"].tolist() == [0.1, 0.5, 0.6]
    assert table["complete"].tolist() == [False] * 3
    assert summarize(table)["complete"].tolist() == [False]


def test_a_whole_last_row_without_a_newline_is_kept(tmp_path: Path) -> None:
    rows = {"main_acc": [0.1, 0.5], "backdoor_acc": [0.0, 0.2]}
    run = write_run(tmp_path / "whole", run_config(fraction=0.1, seed=0), rows)
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text.rstrip("\n"))
    write_run(tmp_path / "blank", run_config(fraction=0.1, seed=1), rows)
    (tmp_path / "blank" / "metrics.csv").write_text(text + "\n\n")  # blank lines are no row

    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedRunWarning)
        table = gather_runs(tmp_path)

    assert table["round"].tolist() == [0, 1, 0, 1]
    assert table["complete"].tolist() == [True] * 4


def test_client_resources_by_hand() -> None:
    from fedbackdoor.results import client_resources

    clients = pd.DataFrame(
        {
            "run": ["a", "a", "a", "b"],
            "client_seconds": [1.0, 2.0, 6.0, 0.5],
            "peak_rss_mb": [900.0, 1100.0, 1000.0, 500.0],
        }
    )

    table = client_resources(clients).set_index("run")

    assert table.loc["a", "client_seconds"] == 3.0 and table.loc["a", "client_seconds_max"] == 6.0
    assert table.loc["a", "peak_rss_mb"] == 1100.0 and table.loc["b", "peak_rss_mb"] == 500.0
    assert table["gpu_peak_mb"].isna().all()  # no GPU column recorded
    assert client_resources(pd.DataFrame({"run": ["a"], "train_loss": [1.0]})).empty
