"""Paper figures from small tables: files written, what is drawn, and when they do not apply."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from fedbackdoor import plots
from fedbackdoor.curves import resistance_point
from fedbackdoor.plots import plot_durability, plot_heatmap, plot_poisoning_curve, plot_rounds

PNG = b"\x89PNG\r\n\x1a\n"


def rounds_table(
    runs: Sequence[Mapping[str, object]], backdoor: Callable[[Mapping[str, object], int], float]
) -> pd.DataFrame:
    """A gather_runs-shaped table: identifying columns, then round and metrics."""
    rows = []
    for run in runs:
        for r in range(6):
            rows.append(
                {**run, "round": r, "main_acc": 0.1 + 0.15 * r, "backdoor_acc": backdoor(run, r)}
            )
    return pd.DataFrame(rows)


def summary_table(rows: list[tuple[str, str, float, int, float, float]]) -> pd.DataFrame:
    """A summarize-shaped table from (defense, attack, fraction, seed, main, backdoor)."""
    return pd.DataFrame(
        [
            {
                "run": str(i),
                "defense": d,
                "attack": a,
                "attack.fraction": f,
                "seed": s,
                "final_main_acc": m,
                "final_backdoor_acc": b,
                "complete": True,
            }  # fmt: skip
            for i, (d, a, f, s, m, b) in enumerate(rows)
        ]
    )


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure a plot function saves, kept for inspection (still written to disk)."""
    figures: list[Figure] = []
    save = plots._save

    def keep(fig: Figure, out: str | Path) -> list[Path]:
        fig.canvas.draw()  # lay text out as in the file
        figures.append(fig)
        return save(fig, out)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def assert_paper_files(paths: list[Path], stem: Path) -> None:
    assert paths == [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    png, pdf = (p.read_bytes() for p in paths)
    assert png[:8] == PNG and pdf[:5] == b"%PDF-"
    width, _ = struct.unpack(">II", png[16:24])
    assert width / 300 <= 3.5 + 1e-9  # one column of a paper at 300 dpi
    assert not list(stem.parent.glob(".*.tmp"))  # atomic writes leave nothing behind


def texts(fig: Figure) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def assert_readable(fig: Figure) -> None:
    assert min(float(t.get_fontsize()) for t in texts(fig)) >= 7


SEEDED_RUNS = [
    {"run": f"{d}{s}", "complete": True, "defense": d, "attack.fraction": 0.1, "seed": s}
    for d in ("fedavg", "median")
    for s in (0, 1)
]


def test_rounds_figure_draws_one_line_per_defense_with_a_band_over_seeds(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    def backdoor(run: Mapping[str, object], r: int) -> float:
        return (0.15 if run["defense"] == "fedavg" else 0.01) * r + 0.01 * (run["seed"] == 1)

    table = rounds_table(SEEDED_RUNS, backdoor)

    paths = plot_rounds(table, tmp_path / "rounds")

    assert_paper_files(paths, tmp_path / "rounds")
    (fig,) = drawn
    main_ax, backdoor_ax = fig.axes
    assert [line.get_label() for line in backdoor_ax.get_lines()] == ["fedavg", "median"]
    fedavg = backdoor_ax.get_lines()[0].get_ydata()
    assert np.allclose(fedavg, 0.15 * np.arange(6) + 0.005)  # mean over seeds 0 and 1
    assert len(backdoor_ax.collections) == 2  # a min-max band per line
    assert_readable(fig)


def test_rounds_figure_labels_other_swept_settings(tmp_path: Path, drawn: list[Figure]) -> None:
    runs = [{**run, "defense.max_norm": 1.0 + (run["seed"] == 1)} for run in SEEDED_RUNS]
    table = rounds_table(runs, lambda run, r: 0.1 * r)

    plot_rounds(table, tmp_path / "rounds")

    labels = [line.get_label() for line in drawn[0].axes[0].get_lines()]
    assert labels == [
        "fedavg, max_norm=1",
        "fedavg, max_norm=2",
        "median, max_norm=1",
        "median, max_norm=2",
    ]


def test_rounds_figure_needs_rounds(tmp_path: Path) -> None:
    assert plot_rounds(pd.DataFrame(), tmp_path / "r") == []
    assert plot_rounds(pd.DataFrame({"run": ["a"], "main_acc": [0.5]}), tmp_path / "r") == []
    assert not list(tmp_path.iterdir())


def poisoning_rows() -> list[tuple[str, str, float, int, float, float]]:
    rows = []
    for defense, centre in (("fedavg", 0.05), ("median", 0.2)):
        for fraction in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4):
            for seed in (0, 1):
                acc = 0.01 + 0.97 / (1 + math.exp(-8 * math.log(fraction / centre)))
                rows.append((defense, "badnets", fraction, seed, 0.88, acc + 0.01 * seed))
        rows.append((defense, "none", 0.0, 0, 0.89, 0.01))  # the baseline joins the curve
    return rows


def test_poisoning_curve_marks_each_lines_resistance_point(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    summary = summary_table(poisoning_rows())

    paths = plot_poisoning_curve(summary, tmp_path / "curve")

    assert_paper_files(paths, tmp_path / "curve")
    (fig,) = drawn
    (ax,) = fig.axes
    curves = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    markers = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [c.get_label() for c in curves] == ["fedavg", "median"]
    median_x = np.asarray(curves[1].get_xdata()).tolist()
    assert median_x == [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4]  # the no-attack run at 0 joins
    median = summary[summary["defense"] == "median"]
    expected = resistance_point(median["attack.fraction"], median["final_backdoor_acc"])
    assert np.asarray(markers[1].get_xdata())[0] == pytest.approx(expected)
    assert f"{expected:.2g}" in [t.get_text() for t in texts(fig)]
    legend = ax.get_legend()
    assert legend is not None
    assert "resistance point" in [t.get_text() for t in legend.get_texts()]
    assert_readable(fig)


def test_poisoning_curve_needs_two_attacked_fractions(tmp_path: Path) -> None:
    one_fraction = summary_table(
        [("fedavg", "badnets", 0.1, 0, 0.8, 0.9), ("fedavg", "none", 0.0, 0, 0.9, 0.0)]
    )
    incomplete = summary_table(poisoning_rows()).assign(complete=False)

    assert plot_poisoning_curve(one_fraction, tmp_path / "c") == []
    assert plot_poisoning_curve(incomplete, tmp_path / "c") == []
    assert plot_poisoning_curve(pd.DataFrame({"x": [1]}), tmp_path / "c") == []


def test_heatmap_shows_main_and_backdoor_accuracy_per_defense_and_attack(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    summary = summary_table([
        ("fedavg", "badnets", 0.2, 0, 0.80, 0.90), ("fedavg", "badnets", 0.2, 1, 0.82, 0.94),
        ("fedavg", "blend", 0.2, 0, 0.81, 0.70), ("median", "badnets", 0.2, 0, 0.79, 0.05),
        ("median", "blend", 0.2, 0, 0.78, 0.10), ("median", "none", 0.0, 0, 0.83, 0.01),
        ("median", "blend", 0.4, 0, 0.5, 0.99),  # another fraction: left out below
    ])  # fmt: skip

    paths = plot_heatmap(summary, tmp_path / "heat", fraction=0.2)

    assert_paper_files(paths, tmp_path / "heat")
    (fig,) = drawn
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fedavg", "median"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["badnets", "blend", "none"]
    cells = {t.get_text() for t in ax.texts}
    assert cells == {"0.81\n0.92", "0.81\n0.70", "0.79\n0.05", "0.78\n0.10", "0.83\n0.01"}
    assert_readable(fig)


def test_heatmap_needs_two_cells(tmp_path: Path) -> None:
    one = summary_table(
        [("fedavg", "badnets", 0.2, 0, 0.8, 0.9), ("fedavg", "badnets", 0.2, 1, 0.8, 0.9)]
    )

    assert plot_heatmap(one, tmp_path / "h") == []
    assert plot_heatmap(one.drop(columns="attack"), tmp_path / "h") == []


def durability_runs(end_round: float) -> list[dict[str, object]]:
    return [
        {
            "run": f"{d}{s}",
            "complete": True,
            "defense": d,
            "attack.fraction": 0.1,
            "seed": s,
            "attack.start_round": 1,
            "attack.end_round": end_round,
        }  # fmt: skip
        for d in ("fedavg", "clip")
        for s in (0, 1)
    ]


def test_durability_shades_the_attack_window(tmp_path: Path, drawn: list[Figure]) -> None:
    table = rounds_table(durability_runs(2), lambda run, r: 0.4 * min(r, 2) * 0.5 ** max(r - 2, 0))

    paths = plot_durability(table, tmp_path / "durability")

    assert_paper_files(paths, tmp_path / "durability")
    (fig,) = drawn
    (ax,) = fig.axes
    (window,) = [p for p in ax.patches if p.get_label() == "attack window"]
    assert isinstance(window, Rectangle)
    assert (window.get_x(), window.get_x() + window.get_width()) == (0.5, 2.5)  # rounds 1, 2
    assert sorted(str(line.get_label()) for line in ax.get_lines()) == ["clip", "fedavg"]
    assert_readable(fig)


@pytest.mark.parametrize("end_round", [math.nan, 5])  # never stops; stops at the last round
def test_durability_needs_an_attack_that_stops_early(tmp_path: Path, end_round: float) -> None:
    table = rounds_table(durability_runs(end_round), lambda run, r: 0.5)

    assert plot_durability(table, tmp_path / "d") == []
    assert plot_durability(table.drop(columns="attack.end_round"), tmp_path / "d") == []


def test_plotting_leaves_pyplot_and_the_backend_alone(tmp_path: Path) -> None:
    # Figures are plain matplotlib Figures: importing and plotting neither loads pyplot (its
    # global figure manager) nor switches the process's backend.
    code = (
        # dict.__getitem__: the raw setting (reading rcParams['backend'] resolves it, which
        # loads pyplot)
        "import sys, matplotlib; backend = dict.__getitem__(matplotlib.rcParams, 'backend');"
        "import fedbackdoor.plots, fedbackdoor.run_figure as p, pandas as pd;"
        f"p.plot_run(pd.DataFrame({{'round': [0, 1], 'main_acc': [0.1, 0.5], "
        f"'backdoor_acc': [0.0, 0.2]}}), {str(tmp_path / 'r.png')!r});"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot loaded';"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == backend, 'backend changed'"
    )

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.png").stat().st_size > 0
