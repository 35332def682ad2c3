from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedbackdoor.plots import plot_run
from fedbackdoor.results import (
    SUMMARY_METRICS,
    SkippedRunWarning,
    find_runs,
    gather_runs,
    summarize,
)
from fedbackdoor.run_files import (
    COLUMNS,
    MetricsWriter,
    atomic_path,
    detection_totals,
    load_metrics,
)


def test_each_row_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path / "metrics.csv")

    writer.write({"round": 0, "main_acc": 0.1, "backdoor_acc": 0.0, "n_clients": 0})
    first = load_metrics(tmp_path)  # the writer is still open: a crash now keeps round 0
    writer.write({"round": 1, "main_acc": 0.5, "backdoor_acc": 0.2, "det_tpr": math.nan})
    writer.close()
    both = load_metrics(tmp_path / "metrics.csv")

    assert list(first.columns) == list(COLUMNS) and len(first) == 1
    assert both["main_acc"].tolist() == [0.1, 0.5]
    assert both["det_tpr"].isna().all()  # nan and missing are empty cells


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path / "m.csv")
    with pytest.raises(KeyError, match="accuracy"):
        writer.write({"round": 0, "accuracy": 1.0})
    writer.close()


def test_missing_metrics_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        load_metrics(tmp_path)


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"round": [0, 1, 2], "main_acc": [0.1, 0.6, 0.8], "backdoor_acc": [0.0, 0.4, 0.9]}
    )

    out = plot_run(table, tmp_path / "acc.png", title="t")

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- many runs -> one tidy table ---------------------------------------------------------------


def run_config(*, fraction: float, seed: int, defense: str = "fedavg", num_rounds: int = 3) -> dict:
    """A config shaped like the resolved run config (groups nested, Hydra's _target_s)."""
    rule: dict[str, object] = {"_target_": f"fedbackdoor.defenses.aggregators.{defense}"}
    defense_node: dict[str, object] = {"rule": rule, "pre": [], "post": []}
    if defense == "dnc":
        rule["f"] = 1
        defense_node["f"] = 1
    update = {"_target_": "fedbackdoor.attacks.updates.scale", "_partial_": True, "boost": 3.0}
    if fraction == 0:
        update = {"_target_": "fedbackdoor.attacks.updates.identity", "_partial_": True}
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
        *COLUMNS,
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


def test_runs_without_run_json_are_complete_when_every_round_is_there(tmp_path: Path) -> None:
    rows = {"main_acc": [0.1, 0.5, 0.6, 0.7], "backdoor_acc": [0.0] * 4}
    full = write_run(tmp_path / "full", run_config(fraction=0.1, seed=0), rows, status=None)
    short = {k: v[:3] for k, v in rows.items()}
    write_run(tmp_path / "short", run_config(fraction=0.1, seed=1), short, status=None)
    (full / ".hydra").mkdir()  # Hydra's own record of the choices, for runs before run.json
    hydra_choices = {"attack": "badnets", "defense": "median", "hydra/sweeper": "basic"}
    (full / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": hydra_choices}}})
    )

    table = gather_runs(tmp_path).groupby("run").first()

    assert table["complete"].to_dict() == {"full": True, "short": False}
    assert table.loc["full", "defense"] == "median"
    assert "hydra.sweeper" not in table.columns


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


def test_atomic_path_replaces_the_file_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    target.write_text("old")

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    kept = target.read_text()
    with atomic_path(target) as tmp:
        tmp.write_text("new")

    assert kept == "old" and target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary file left


def test_detection_totals_by_hand() -> None:
    # Round 1: 2 of 5 malicious, 1 flagged, 1 benign flagged; round 2: 1 of 4, flagged, none
    # benign; round 3: not scored (detection columns empty).
    metrics = pd.DataFrame(
        {
            "round": [0, 1, 2, 3],
            "n_clients": [0, 5, 4, 5],
            "n_malicious": [0, 2, 1, 1],
            "det_tp": [None, 1, 1, None],
            "det_fp": [None, 1, 0, None],
        }
    )

    totals = detection_totals(metrics)

    assert totals == {
        "det_tp": 2.0,
        "det_fp": 1.0,
        "malicious": 3.0,
        "benign": 6.0,
        "det_tpr": 2 / 3,
        "det_fpr": 1 / 6,
    }


def test_detection_totals_of_a_rule_that_flags_nobody_are_nan() -> None:
    metrics = pd.DataFrame({"round": [0, 1], "n_clients": [0, 5], "n_malicious": [0, 1]})
    assert all(math.isnan(v) for v in detection_totals(metrics).values())
