"""Neural Cleanse: the MAD outlier test by hand, the authors' cost schedule by hand, trigger
recovery on hand-built models whose smallest triggers are known, unlearning on a small trained
model, determinism, the figure."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from fedbackdoor.attacks.triggers import Trigger, square
from fedbackdoor.data.synthetic import synthetic
from fedbackdoor.posttrain import Outcome, ServerData
from fedbackdoor.posttrain.figures import plot_recovered_triggers
from fedbackdoor.posttrain.neural_cleanse import (
    CostSchedule,
    _working_copy,
    anomaly_index,
    flag_labels,
    median,
    neural_cleanse,
    recover_triggers,
    reverse_engineer,
)
from fedbackdoor.seeding import seeded_init
from fedbackdoor.training import evaluate, train

SIDE = 20  # the hand-built models' images are 1 x 20 x 20
PATCH = [(0, 0), (0, 1), (1, 0), (1, 1)]  # the backdoor's 2 x 2 patch, top-left corner
# Full-batch optimisation on these tiny linear models: every check sees all samples, so the
# norms carry no batch-sampling noise (the defaults' batches are for real models).
EXACT: dict[str, Any] = {"steps": 200, "batch_size": 500, "check_every": 1, "early_stop": False}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These models are tiny: a second thread gains nothing, and on a shared core its
    # spin-waits cost 50x (measured: 0.3 ms -> 17 ms per step).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _region_model(sizes: list[int], *, patch: bool) -> nn.Module:
    """A linear classifier on 1 x 20 x 20 images, weights set by hand.

    Class k of the regions scores ``8 * mean(x over its region)`` (disjoint raster-order
    regions of ``sizes`` pixels, the corner patch excluded), so a trigger for it must brighten
    its region: its mask norm grows with the region's size. With ``patch``, class 0 comes
    first and scores ``10 * sum(x over the 2 x 2 corner) - 32``: a backdoor, out of reach on
    clean inputs (a sum of 4 uniforms above 3.8 is needed to pass ~6) and certain with the
    corner set to 1, so its smallest trigger covers the 4 patch pixels only.
    """
    count = len(sizes) + int(patch)
    weight = torch.zeros(count, SIDE * SIDE)
    bias = torch.zeros(count)
    corner = [row * SIDE + col for row, col in PATCH]
    free = [i for i in range(SIDE * SIDE) if i not in corner]
    label = 0
    if patch:
        weight[0, corner] = 10.0
        bias[0] = -32.0
        label = 1
    start = 0
    for size in sizes:
        weight[label, free[start : start + size]] = 8.0 / size
        start += size
        label += 1
    linear = nn.Linear(SIDE * SIDE, count)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return nn.Sequential(nn.Flatten(), linear)


def _server_data(model: nn.Module, count: int, n: int = 500, seed: int = 0) -> ServerData:
    """Uniform random images labelled by the model itself."""
    x = torch.rand(n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return ServerData(x=x, y=y, num_classes=count, x_test_clean=x[:0], x_test_triggered=x[:0])


# Backdoor at label 0 plus five labels whose triggers need 56..80-pixel regions brightened.
_BACKDOORED_SIZES = [56, 62, 68, 74, 80]
# No backdoor: six regions of spread sizes (the norms spread evenly, so no label stands out:
# for norms proportional to the sizes, the smallest one's index is 15 / (1.4826 * 9) = 1.12).
_CLEAN_SIZES = [50, 56, 62, 68, 74, 80]


def _run(model: nn.Module, data: ServerData, seed: int = 0, **settings: Any) -> Outcome:
    return neural_cleanse(
        model,
        data,
        generator=torch.Generator().manual_seed(seed),
        device="cpu",
        earlier={},
        **{**EXACT, **settings},
    )


# --- the outlier test -------------------------------------------------------------------------


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values() -> None:
    # Prepare: torch.median would return 2 (the lower middle); np.median returns 2.5.
    values = torch.tensor([4.0, 1.0, 3.0, 2.0])

    # Execute
    even, odd = median(values), median(torch.tensor([3.0, 1.0, 2.0]))

    # Assert
    assert float(even) == 2.5
    assert float(odd) == 2.0


def test_anomaly_index_of_an_odd_count_by_hand() -> None:
    # Prepare: median 11; |norm - 11| = [10, 1, 0, 1, 2]; sorted [0, 1, 1, 2, 10] -> MAD 1;
    # scale 1.4826 * 1; index = deviation / 1.4826.
    norms = torch.tensor([1.0, 10.0, 11.0, 12.0, 13.0])

    # Execute
    index = anomaly_index(norms)

    # Assert
    expected = torch.tensor([10.0, 1.0, 0.0, 1.0, 2.0], dtype=torch.float64) / 1.4826
    assert index.dtype == torch.float64
    torch.testing.assert_close(index, expected)
    assert index[0] == pytest.approx(6.744907, abs=1e-6)


def test_anomaly_index_of_an_even_count_by_hand() -> None:
    # Prepare: median (12 + 14) / 2 = 13 (torch.median's 12 would give other numbers);
    # |norm - 13| = [11, 3, 1, 1, 3, 17]; sorted [1, 1, 3, 3, 11, 17] -> MAD (3 + 3) / 2 = 3;
    # scale 1.4826 * 3 = 4.4478.
    norms = torch.tensor([2.0, 10.0, 12.0, 14.0, 16.0, 30.0])

    # Execute
    index = anomaly_index(norms)

    # Assert
    expected = torch.tensor([11.0, 3.0, 1.0, 1.0, 3.0, 17.0], dtype=torch.float64) / 4.4478
    torch.testing.assert_close(index, expected)


def test_anomaly_index_with_zero_mad_is_zero_at_the_median_and_inf_elsewhere() -> None:
    # Prepare: median 5, deviations [0, 0, 0, 4] -> MAD 0.
    norms = torch.tensor([5.0, 5.0, 5.0, 1.0])

    # Execute
    index = anomaly_index(norms)
    flagged = flag_labels(norms)

    # Assert
    assert index.tolist() == [0.0, 0.0, 0.0, math.inf]
    assert flagged == [3]


def test_only_small_outliers_are_flagged() -> None:
    # Prepare: [1, 10, 11, 12, 13]: label 0's index 6.74 > 2 and its norm is below the median.
    # [11, 10, 12, 13, 40]: median 12, deviations [1, 2, 0, 1, 28] -> MAD 1; label 4's index
    # 28 / 1.4826 = 18.9 > 2 but its norm is above the median.
    small = torch.tensor([1.0, 10.0, 11.0, 12.0, 13.0])
    large = torch.tensor([11.0, 10.0, 12.0, 13.0, 40.0])

    # Execute
    flagged_small = flag_labels(small)
    flagged_large = flag_labels(large)
    flagged_strict = flag_labels(small, threshold=7.0)  # 6.74 is not above 7

    # Assert
    assert flagged_small == [0]
    assert flagged_large == []
    assert flagged_strict == []


@pytest.mark.parametrize(
    "norms",
    [torch.tensor([]), torch.ones(2, 3), torch.tensor([1.0, float("nan"), 2.0])],
    ids=["empty", "2-D", "nan"],
)
def test_anomaly_index_rejects_bad_norms(norms: Tensor) -> None:
    # Prepare: norms
    # Execute / Assert
    with pytest.raises(ValueError, match="norms"):
        anomaly_index(norms)


# --- the cost schedule ------------------------------------------------------------------------


def test_cost_schedule_starts_at_zero_then_moves_as_the_authors() -> None:
    # Prepare: patience 2, multiplier 2 (down 2 ** 1.5), init 1e-3, starting from 0.
    schedule = CostSchedule(init_cost=1e-3, patience=2, cost_multiplier=2.0)
    costs = []

    # Execute: success, success (-> init_cost, counters cleared, then this success counts:
    # up 1), success (up 2 -> x2), failure, failure (down 2 -> / 2 ** 1.5).
    for hit in (True, True, True, False, False):
        schedule.check(hit, best_norm=math.inf)
        costs.append(schedule.cost)

    # Assert
    assert costs[:3] == [0.0, 1e-3, 2e-3]
    assert costs[3] == 2e-3
    assert costs[4] == pytest.approx(2e-3 / 2**1.5)
    assert schedule.went_up and schedule.went_down


def test_cost_schedule_stops_early_only_after_both_directions_and_no_improvement() -> None:
    # Prepare: start at init_cost, patience 1, early stop after 2 checks without a 1 % gain.
    schedule = CostSchedule(
        init_cost=1e-3,
        patience=1,
        cost_multiplier=2.0,
        reset_cost_to_zero=False,
        early_stop=True,
        early_stop_patience=2,
    )

    # Execute
    first = schedule.check(True, best_norm=10.0)  # the first best; the cost goes up
    second = schedule.check(False, best_norm=10.0)  # no gain (1 stale); the cost goes down
    improved = schedule.check(False, best_norm=9.0)  # 10 % better: the count restarts
    third = schedule.check(False, best_norm=9.0)  # 1 stale
    fourth = schedule.check(False, best_norm=8.95)  # < 1 % better: 2 stale, both ways -> stop

    # Assert
    assert [first, second, improved, third, fourth] == [False, False, False, False, True]


# --- reverse engineering on hand-built models -------------------------------------------------


def test_reverse_engineer_finds_the_patch_as_the_smallest_trigger() -> None:
    # Prepare
    model = _region_model(_BACKDOORED_SIZES, patch=True)
    data = _server_data(model, 6)

    # Execute
    found = [
        reverse_engineer(
            model, data.x, data.y, label, generator=torch.Generator().manual_seed(0), **EXACT
        )
        for label in (0, 1)
    ]

    # Assert: the backdoor needs at most the 4 patch pixels; the smallest clean label needs
    # part of a 56-pixel region (about 14 by the same reasoning).
    backdoor, clean = found
    assert backdoor.reached and backdoor.success >= 0.99
    assert backdoor.l1 <= 4.0
    assert backdoor.l1 * 3 < clean.l1
    on_patch = torch.tensor([float(backdoor.mask[row, col]) for row, col in PATCH])
    assert bool((on_patch > 0.5).all())
    assert float(on_patch.sum()) >= 0.9 * backdoor.l1
    assert clean.reached and clean.success >= 0.99


def test_reverse_engineer_leaves_the_model_alone() -> None:
    # Prepare
    model = _region_model(_BACKDOORED_SIZES, patch=True).train()
    data = _server_data(model, 6, n=200)
    before = copy.deepcopy(model.state_dict())

    # Execute
    reverse_engineer(model, data.x, data.y, 0, generator=torch.Generator().manual_seed(0), steps=5)

    # Assert
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_a_conv_model_keeps_its_layout_and_trainability_and_the_copy_agrees_with_it() -> None:
    # Prepare: the recovery computes through a channels-last copy on the CPU.
    with seeded_init(0, "conv"):
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
        )
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(1))

    # Execute
    result = reverse_engineer(
        model,
        x,
        torch.zeros(12, dtype=torch.long),
        1,
        generator=torch.Generator().manual_seed(0),
        steps=3,
    )

    # Assert: the caller's model is untouched; the copy computes the same logits.
    conv = model[0]
    assert isinstance(conv, nn.Conv2d)
    assert conv.weight.is_contiguous() and conv.weight.requires_grad
    assert model.training
    copy_ = _working_copy(model, "cpu")
    assert copy_[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not copy_.training
    torch.testing.assert_close(copy_(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    assert result.steps == 3


def test_neural_cleanse_flags_the_backdoor_label_and_nothing_else() -> None:
    # Prepare
    model = _region_model(_BACKDOORED_SIZES, patch=True)
    data = _server_data(model, 6)

    # Execute
    outcome = _run(model, data)

    # Assert
    fields = outcome.fields
    norms = [float(v) for v in str(fields["mask_l1"]).split()]
    assert fields["flagged_labels"] == "0"
    assert fields["flagged"] is True
    assert fields["mask_l1_min_label"] == 0
    assert fields["mask_l1_min"] == pytest.approx(min(norms), rel=1e-5)
    assert float(fields["anomaly_index"]) > 2.0
    assert len(norms) == 6
    assert outcome.model is None and fields["unlearned"] is False
    assert outcome.artifacts["masks"].shape == (6, SIDE, SIDE)
    assert outcome.artifacts["patterns"].shape == (6, 1, SIDE, SIDE)
    torch.testing.assert_close(
        outcome.artifacts["anomaly_indices"], anomaly_index(outcome.artifacts["norms"])
    )


def test_neural_cleanse_flags_nothing_without_a_backdoor_and_then_does_not_unlearn() -> None:
    # Prepare
    model = _region_model(_CLEAN_SIZES, patch=False)
    data = _server_data(model, 6)

    # Execute
    outcome = _run(model, data, unlearn=True)

    # Assert
    assert outcome.fields["flagged_labels"] == ""
    assert outcome.fields["flagged"] is False
    assert float(outcome.fields["anomaly_index"]) <= 2.0
    assert outcome.model is None
    assert outcome.fields["unlearned"] is False


def test_recovery_is_deterministic_and_draws_from_the_generator_only() -> None:
    # Prepare
    model = _region_model(_BACKDOORED_SIZES, patch=True)
    data = _server_data(model, 6, n=200)
    settings: dict[str, Any] = {"steps": 20, "batch_size": 32, "check_every": 2}
    global_state = torch.get_rng_state()

    # Execute
    first, again, other = (
        recover_triggers(
            model,
            data.x,
            data.y,
            num_classes=6,
            generator=torch.Generator().manual_seed(seed),
            **settings,
        )
        for seed in (7, 7, 8)
    )

    # Assert
    assert torch.equal(first.masks, again.masks)
    assert torch.equal(first.patterns, again.patterns)
    assert torch.equal(first.norms, again.norms)
    assert not torch.equal(first.masks, other.masks)
    assert torch.equal(torch.get_rng_state(), global_state)


# --- unlearning on a small trained model ------------------------------------------------------


def test_unlearning_removes_the_recovered_trigger_and_the_backdoor() -> None:
    # Prepare: an MLP trained on 12 x 12 synthetic images, 10 % of them stamped with a white
    # 2 x 2 corner square and relabelled 0.
    data = synthetic(num_train=3000, num_test=1500, num_classes=6, image_size=(12, 12), seed=0)
    trigger = square(image_size=(12, 12), size=2, location=(0, 0))
    poisoned = torch.rand(3000, generator=torch.Generator().manual_seed(0)) < 0.1
    x, y = data.x_train.clone(), data.y_train.clone()
    x[poisoned], y[poisoned] = trigger(x[poisoned]), 0
    with seeded_init(0, "mlp"):
        model = nn.Sequential(nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 6))
    train(model, x, y, epochs=10, batch_size=32, lr=0.1, generator=torch.Generator().manual_seed(1))
    x_test, y_test = data.x_test[500:], data.y_test[500:]
    others = x_test[y_test != 0]
    to_zero = torch.zeros(others.shape[0], dtype=torch.long)
    server = ServerData(
        x=data.x_test[:500],
        y=data.y_test[:500],
        num_classes=6,
        x_test_clean=x_test,
        x_test_triggered=trigger(others),
    )
    backdoor_before = evaluate(model, trigger(others), to_zero).accuracy

    # Execute
    outcome = _run(copy.deepcopy(model), server, batch_size=500, unlearn=True, unlearn_lr=0.1)

    # Assert
    assert outcome.fields["flagged_labels"] == "0"
    assert outcome.fields["unlearned"] is True and outcome.model is not None
    recovered = Trigger(
        mask=outcome.artifacts["masks"][0], pattern=outcome.artifacts["patterns"][0]
    )
    recovered_before = evaluate(model, recovered(others), to_zero).accuracy
    recovered_after = evaluate(outcome.model, recovered(others), to_zero).accuracy
    backdoor_after = evaluate(outcome.model, trigger(others), to_zero).accuracy
    assert recovered_before >= 0.9
    assert recovered_after < recovered_before - 0.5
    assert backdoor_after < backdoor_before - 0.3
    assert evaluate(outcome.model, x_test, y_test).accuracy >= 0.9


# --- settings ---------------------------------------------------------------------------------


class _Untouchable(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("a bad setting must be rejected before the model is used")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("steps", 0),
        ("batch_size", 0),
        ("check_every", 0),
        ("lr", 0.0),
        ("init_cost", -1.0),
        ("attack_success_threshold", 1.5),
        ("cost_multiplier", 1.0),
        ("patience", 0),
        ("threshold", 0.0),
        ("unlearn_ratio", 0.0),
        ("unlearn_epochs", 0),
        ("unlearn_lr", float("nan")),
    ],
)
def test_bad_settings_are_rejected_up_front(name: str, value: Any) -> None:
    # Prepare
    data = _server_data(_region_model([4, 4], patch=False), 2, n=10)

    # Execute / Assert
    with pytest.raises(ValueError, match=name):
        _run(_Untouchable(), data, **{name: value})


# --- the figure -------------------------------------------------------------------------------


def test_the_figure_is_written_as_png_and_pdf(tmp_path: Path) -> None:
    # Prepare
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 8, 8, generator=generator)
    patterns = torch.rand(5, 1, 8, 8, generator=generator)
    true_image = square(image_size=(8, 8), size=2, location=(0, 0))(torch.full((1, 1, 8, 8), 0.5))

    # Execute
    written = plot_recovered_triggers(
        masks, patterns, true_image[0], [2], tmp_path / "sub" / "nc", norms=masks.sum((1, 2))
    )

    # Assert
    assert [p.name for p in written] == ["nc.png", "nc.pdf"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written[1].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["nc.pdf", "nc.png"]


def test_the_figure_rejects_a_flagged_label_it_has_no_panel_for(tmp_path: Path) -> None:
    # Prepare
    masks, patterns = torch.zeros(3, 4, 4), torch.zeros(3, 1, 4, 4)

    # Execute / Assert
    with pytest.raises(ValueError, match="flagged"):
        plot_recovered_triggers(masks, patterns, None, [3], tmp_path / "nc")
