"""Tests for fedbackdoor.attacks.poison."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbackdoor.attacks.poison import backdoor_testset, poison_dataset
from fedbackdoor.attacks.triggers import Trigger, checkerboard

TARGET = 0


def _dataset(n: int = 20, channels: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, 8, 8, generator=generator) * 0.8 + 0.1
    y = torch.arange(n, dtype=torch.int64) % 4
    return x, y


def _trigger() -> Trigger:
    return checkerboard(image_size=(8, 8), size=3, location="bottom_right")


def _poison(
    x: torch.Tensor, y: torch.Tensor, ratio: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return poison_dataset(
        x,
        y,
        trigger=_trigger(),
        poison_ratio=ratio,
        target_label=TARGET,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize(
    ("ratio", "expected"), [(0.0, 0), (0.1, 2), (0.25, 5), (0.5, 10), (1.0, 20)]
)
def test_poisons_exactly_round_ratio_times_n(ratio: float, expected: int) -> None:
    # Prepare
    x, y = _dataset(n=20)

    # Execute
    _, _, poisoned = _poison(x, y, ratio, seed=0)

    # Assert
    assert poisoned.dtype == torch.bool and poisoned.shape == (20,)
    assert int(poisoned.sum()) == expected == round(ratio * 20)


def test_only_the_chosen_samples_change_and_they_carry_trigger_and_target() -> None:
    # Prepare
    x, y = _dataset(n=20, channels=3)
    x_before, y_before = x.clone(), y.clone()

    # Execute
    x_out, y_out, poisoned = _poison(x, y, 0.3, seed=1)

    # Assert
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert torch.equal(x_out[~poisoned], x[~poisoned])
    assert torch.equal(y_out[~poisoned], y[~poisoned])
    assert torch.equal(x_out[poisoned], _trigger().apply(x[poisoned]))
    assert torch.all(y_out[poisoned] == TARGET)
    assert y_out.dtype == torch.int64 and x_out.dtype == x.dtype


def test_same_seed_same_choice_different_seed_different_choice() -> None:
    # Prepare
    x, y = _dataset(n=100)

    # Execute
    _, _, first = _poison(x, y, 0.2, seed=7)
    _, _, again = _poison(x, y, 0.2, seed=7)
    _, _, other = _poison(x, y, 0.2, seed=8)

    # Assert: two seeds pick the same 20 of 100 with probability 1 / C(100, 20) ~ 2e-21.
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_choice_is_the_head_of_randperm() -> None:
    x, y = _dataset(n=10)
    expected = torch.zeros(10, dtype=torch.bool)
    expected[torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4]] = True

    _, _, poisoned = _poison(x, y, 0.4, seed=3)

    assert torch.equal(poisoned, expected)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=40), ratio=st.floats(min_value=0.0, max_value=1.0))
def test_poisoned_count_for_any_size_and_ratio(n: int, ratio: float) -> None:
    x, y = _dataset(n=n)

    x_out, y_out, poisoned = _poison(x, y, ratio, seed=0)

    assert int(poisoned.sum()) == round(ratio * n)
    assert torch.equal(x_out[~poisoned], x[~poisoned])


@pytest.mark.parametrize("ratio", [-0.1, 1.01, float("nan")])
def test_rejects_poison_ratio_outside_unit_interval(ratio: float) -> None:
    x, y = _dataset()

    with pytest.raises(ValueError, match="poison_ratio"):
        _poison(x, y, ratio, seed=0)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.int64), "x must have shape"),
        (torch.zeros(4, 1, 8, 8), torch.zeros(5, dtype=torch.int64), "y must have shape"),
        (torch.zeros(4, 1, 8, 8), torch.zeros(4), "integer labels"),
    ],
)
def test_rejects_malformed_datasets(x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        poison_dataset(
            x,
            y,
            trigger=_trigger(),
            poison_ratio=0.5,
            target_label=TARGET,
            generator=torch.Generator(),
        )


@pytest.mark.parametrize("target_label", [-1, 1.5])
def test_rejects_bad_target_label(target_label: float) -> None:
    x, y = _dataset()

    with pytest.raises(ValueError, match="target_label"):
        backdoor_testset(x, y, trigger=_trigger(), target_label=target_label)  # type: ignore[arg-type]


def test_backdoor_testset_drops_the_target_class_and_stamps_everything() -> None:
    # Prepare
    x, y = _dataset(n=12, channels=3)
    x_before, y_before = x.clone(), y.clone()
    keep = y != TARGET

    # Execute
    x_bd, y_bd = backdoor_testset(x, y, trigger=_trigger(), target_label=TARGET)

    # Assert
    assert x_bd.shape == (9, 3, 8, 8)  # labels 0..3 repeated: three of the twelve are the target
    assert torch.equal(y_bd, torch.zeros(9, dtype=torch.int64))
    assert torch.equal(x_bd, _trigger().apply(x[keep]))
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


def test_backdoor_testset_uses_the_given_target() -> None:
    x, y = _dataset(n=12)

    x_bd, y_bd = backdoor_testset(x, y, trigger=_trigger(), target_label=2)

    assert x_bd.shape[0] == 9 and torch.all(y_bd == 2)
