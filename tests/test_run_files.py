"""One run's files: metrics.csv rows, run.json, detection totals (fedbackdoor.run_files)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from fedbackdoor.run_figure import plot_run
from fedbackdoor.run_files import (
    COLUMNS,
    MetricsWriter,
    detection_totals,
    is_complete,
    load_metrics,
    read_run_status,
    write_run_status,
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


def test_client_reports_go_to_clients_csv_and_the_rounds_totals_to_metrics(tmp_path: Path) -> None:
    from fedbackdoor.privacy import PrivacyLedger
    from fedbackdoor.run_files import ClientReport, RunRecorder

    ledger = PrivacyLedger(delta=1e-5)
    recorder = RunRecorder(
        tmp_path, "a: 1\n", num_rounds=1, columns=("main_acc", "backdoor_acc"), privacy=ledger
    )
    dp = {"dp_noise_multiplier": 1.0, "dp_sample_rate": 0.01, "dp_steps": 100.0}
    # Client 0: 10 removed, 6 of them poisoned, of 8 poisoned; client 3: 5 removed, none
    # poisoned, of 0; client 5: malicious code, no DP-SGD and no sanitizing.
    first = {"san_removed": 10.0, "san_removed_poisoned": 6.0, "san_poisoned": 8.0}
    second = {"dp_steps": 50.0, "san_removed": 5.0, "san_removed_poisoned": 0.0}
    reports = [
        ClientReport(0, True, 0.5, {**dp, **first, "grad_poison_norm": 2.0}),
        ClientReport(3, False, 0.7, {**dp, **second, "san_poisoned": 0.0}),
        ClientReport(5, True, 0.2, {"grad_poison_norm": 3.0}),
    ]

    recorder.round(1, {"main_acc": 0.5, "backdoor_acc": 0.1}, None, 1.0, clients=reports)
    recorder.close()

    clients = pd.read_csv(tmp_path / "clients.csv")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(clients["client"]) == [0, 3, 5]
    assert clients["dp_epsilon"].iloc[0] == pytest.approx(ledger.epsilon(0))
    assert clients["dp_epsilon"].iloc[0] > clients["dp_epsilon"].iloc[1] > 0  # 100 vs 50 steps
    assert pd.isna(clients["dp_epsilon"].iloc[2]) and clients["grad_poison_norm"].iloc[2] == 3.0
    row = metrics.iloc[0]
    assert row["dp_epsilon"] == pytest.approx(ledger.epsilon(0))  # the largest so far
    assert row["san_removed"] == 15 and row["san_poisoned"] == 8
    assert row["san_precision"] == pytest.approx(6 / 15)
    assert row["san_recall"] == pytest.approx(6 / 8)


def test_a_broken_dp_report_is_said_and_the_round_is_still_written(tmp_path: Path) -> None:
    from fedbackdoor.privacy import PrivacyLedger
    from fedbackdoor.run_files import ClientReport, RunRecorder

    recorder = RunRecorder(
        tmp_path, "a: 1\n", num_rounds=1, columns=("main_acc", "backdoor_acc"),
        privacy=PrivacyLedger(delta=1e-5),
    )  # fmt: skip
    broken = ClientReport(2, False, 0.4, {"dp_steps": 10.0, "dp_noise_multiplier": 1.0})

    recorder.round(1, {"main_acc": 0.5, "backdoor_acc": 0.1}, None, 1.0, clients=[broken])
    recorder.close()

    clients = pd.read_csv(tmp_path / "clients.csv")
    assert len(clients) == 1 and pd.isna(clients["dp_epsilon"].iloc[0])
    assert pd.read_csv(tmp_path / "metrics.csv")["dp_epsilon"].iloc[0] == 0.0


CORRUPT_RUN_JSON = ["{not json", "", '{"status": "compl', "[1, 2]", '"complete"', "null"]


@pytest.mark.parametrize("text", CORRUPT_RUN_JSON)
def test_a_corrupt_run_json_is_no_status_and_never_a_complete_run(
    tmp_path: Path, text: str
) -> None:
    # Prepare: the same settings in config.yaml, so that only run.json decides
    cfg = OmegaConf.create({"seed": 0, "backend": {"num_cpus": None}})
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (tmp_path / "run.json").write_text(text)

    # Execute / Assert: a rerun of the folder is not blocked
    assert read_run_status(tmp_path) is None
    assert is_complete(tmp_path, cfg) is False
    (tmp_path / "run.json").write_text('{"status": "complete"}')  # the same folder, readable
    assert is_complete(tmp_path, cfg) is True


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "null"])
def test_write_run_status_replaces_a_corrupt_run_json(tmp_path: Path, text: str) -> None:
    (tmp_path / "run.json").write_text(text)

    write_run_status(tmp_path, status="running", num_rounds=3)

    assert read_run_status(tmp_path) == {"status": "running", "num_rounds": 3}
