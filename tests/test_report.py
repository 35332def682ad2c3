"""`fedbackdoor report DIR` on hand-made sweeps, in process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedbackdoor.cli import main
from fedbackdoor.report import NoRunsError, write_report
from fedbackdoor.results import SkippedRunWarning, gather_runs
from tests.test_results import choices, make_sweep, run_config, write_run


def poisoning_sweep(root: Path) -> Path:
    """make_sweep's runs plus FedAvg at fractions 0.2 and 0.3: a poisoning curve."""
    make_sweep(root)
    for name, fraction, final in (("5", 0.2, 0.95), ("6", 0.3, 0.99)):
        rows = {"main_acc": [0.1, 0.5, 0.7, 0.8], "backdoor_acc": [0.0, 0.5, 0.9, final]}
        config = run_config(fraction=fraction, seed=0)
        write_run(root / name, config, rows, choices=choices("badnets", "fedavg"))
    return root


def test_report_writes_tables_and_figures_and_prints_the_folder_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = poisoning_sweep(tmp_path / "sweep")

    main(["report", str(sweep)])

    out, err = capsys.readouterr()
    report = sweep / "report"
    assert out.splitlines()[-1] == str(report.resolve())
    assert out.splitlines()[0] == "6 runs: 5 complete, 1 incomplete (3)"
    assert "skipped" in err and "sweep/4" in err  # the broken folder, named
    files = {p.name for p in report.iterdir()}
    figures = {"rounds_fraction0", "rounds_fraction0.1", "rounds_fraction0.2",
               "rounds_fraction0.3", "poisoning_curve"}  # fmt: skip
    assert files == {"rounds.parquet", "rounds.csv", "summary.csv"} | {
        f"{stem}.{ext}" for stem in figures for ext in ("png", "pdf")
    }
    with pytest.warns(SkippedRunWarning):
        expected = gather_runs(sweep)
    pd.testing.assert_frame_equal(pd.read_parquet(report / "rounds.parquet"), expected)
    assert pd.read_csv(report / "rounds.csv").shape == expected.shape
    summary = pd.read_csv(report / "summary.csv")
    assert summary["run"].astype(str).tolist() == ["0", "1", "2", "3", "5", "6"]
    assert summary["rounds_to_threshold"].fillna(-1).tolist() == [2, -1, -1, -1, 2, 2]


def test_threshold_reaches_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(tmp_path / "sweep")

    main(["report", str(sweep), "--threshold", "0.25"])

    summary = pd.read_csv(sweep / "report" / "summary.csv")
    assert summary["rounds_to_threshold"].fillna(-1).tolist() == [2, -1, 3, 1]
    assert capsys.readouterr().out.splitlines()[-1].endswith("report")


@pytest.mark.parametrize("make", ["empty", "missing", "only_broken"])
def test_a_folder_without_runs_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str
) -> None:
    folder = tmp_path / "outputs"
    if make != "missing":
        folder.mkdir()
    if make == "only_broken":
        (folder / "0").mkdir()
        (folder / "0" / "metrics.csv").write_text("")

    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(folder)])

    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("fedbackdoor: ") and str(folder) in last
    assert not (folder / "report").exists()


def test_bad_threshold_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(make_sweep(tmp_path)), "--threshold", "50"])

    assert exit_info.value.code == 2
    assert "--threshold" in capsys.readouterr().err


def test_a_new_report_replaces_figures_that_no_longer_apply(tmp_path: Path) -> None:
    sweep = poisoning_sweep(tmp_path / "sweep")
    with pytest.warns(SkippedRunWarning):
        write_report(sweep)
    (sweep / "report" / "notes.txt").write_text("mine")
    for name in ("5", "6"):  # now one attacked fraction: no poisoning curve
        (sweep / name / "metrics.csv").unlink()

    with pytest.warns(SkippedRunWarning):
        report = write_report(sweep)

    assert not (report / "poisoning_curve.png").exists()
    assert (report / "rounds_fraction0.1.png").exists()
    assert (report / "notes.txt").read_text() == "mine"  # not ours: kept


def test_settings_of_mixed_kinds_are_stored_as_text_in_parquet(tmp_path: Path) -> None:
    for name, boost in (("a", 3.0), ("b", "auto")):
        config = run_config(fraction=0.1, seed=0)
        config["attack"]["boost"] = boost
        write_run(tmp_path / name, config, {"main_acc": [0.1], "backdoor_acc": [0.0]})

    report = write_report(tmp_path)

    table = pd.read_parquet(report / "rounds.parquet")
    assert table["attack.boost"].tolist() == ["3.0", "auto"]


def test_write_report_refuses_a_folder_without_runs(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))

    with pytest.raises(NoRunsError, match="no run under"):
        write_report(tmp_path)


def _with_poisoned_share(sweep: Path) -> dict[str, float]:
    """Give each complete run of poisoning_sweep the poisoned share a run writes at start."""
    shares = {"0": 0.05, "1": 0.0, "2": 0.05, "5": 0.1, "6": 0.15}
    for name, share in shares.items():
        status = json.loads((sweep / name / "run.json").read_text())
        status.update(poisoned_share=share, poisoned_samples=int(share * 1000))
        (sweep / name / "run.json").write_text(json.dumps(status))
    return shares


def test_curves_against_the_poisoned_share_and_with_mithridates_resistance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = poisoning_sweep(tmp_path / "sweep")
    shares = _with_poisoned_share(sweep)

    main(["report", str(sweep), "--x", "poisoned_share", "--resistance", "mithridates-simple"])

    summary = pd.read_csv(sweep / "report" / "summary.csv").set_index("run")
    for name, share in shares.items():
        assert summary.loc[int(name), "poisoned_share"] == share
        assert summary.loc[int(name), "poisoned_samples"] == int(share * 1000)
    assert math.isnan(summary.loc[3, "poisoned_share"])  # a run that never recorded it
    # one FedAvg line over shares 0.05, 0.1, 0.15 (attack.fraction does not split it)
    assert (sweep / "report" / "poisoning_curve.png").is_file()
    assert capsys.readouterr().out.splitlines()[-1].endswith("report")


def test_an_x_axis_the_runs_do_not_have_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = poisoning_sweep(tmp_path / "sweep")

    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(sweep), "--x", "attack.no_such_key"])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fedbackdoor: --x attack.no_such_key: no such column")
