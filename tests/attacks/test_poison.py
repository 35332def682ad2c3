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


# --- distributed, blended, label-flipping and edge-case poisoning ----------------------------

from fedbackdoor.attacks.poison import (  # noqa: E402
    dba_assignment,
    dba_part_testsets,
    dba_poison,
    edge_case_mask,
    edge_case_poison,
    edge_case_testset,
    label_flip,
    relabel_testset,
)
from fedbackdoor.attacks.triggers import blend, split  # noqa: E402


def test_dba_parts_tile_the_global_trigger_exactly() -> None:
    trigger = checkerboard(image_size=(12, 12), size=4)

    parts = split(trigger, 4)

    masks = torch.stack([p.mask for p in parts])
    assert torch.equal(masks.sum(0), trigger.mask)  # union is the global mask...
    assert int((masks > 0).sum(0).max()) == 1  # ...and no pixel is in two parts
    assert all(int((p.mask > 0).sum()) == 4 for p in parts)  # four 1x4 bars
    x = torch.full((1, 1, 12, 12), 0.5)
    stamped = x
    for part in parts:
        stamped = part.apply(stamped)
    assert torch.equal(stamped, trigger.apply(x))


def test_dba_attacker_stamps_only_its_part() -> None:
    trigger = checkerboard(image_size=(12, 12), size=4)
    x = torch.full((10, 1, 12, 12), 0.5)
    y = torch.ones(10, dtype=torch.long)

    x2, y2, poisoned = dba_poison(
        x,
        y,
        trigger=trigger,
        num_parts=4,
        poison_ratio=1.0,
        target_label=0,
        generator=torch.Generator(),
        attacker_index=5,
        num_attackers=6,
    )

    changed_rows = torch.nonzero((x2 != x)[0, 0].any(dim=1)).flatten().tolist()
    assert changed_rows == [split(trigger, 4)[1].mask.sum(1).nonzero().item()]  # part 5 mod 4
    assert poisoned.all() and (y2 == 0).all()


@pytest.mark.parametrize(
    ("num_parts", "num_attackers", "expected"),
    [
        (4, 2, [(0, 2), (1, 3)]),
        (4, 4, [(0,), (1,), (2,), (3,)]),
        (4, 6, [(0,), (1,), (2,), (3,), (0,), (1,)]),  # i mod 4, as in the paper
        (4, 3, [(0, 3), (1,), (2,)]),
        (4, 1, [(0, 1, 2, 3)]),
        (1, 3, [(0,), (0,), (0,)]),
        (4, 0, []),
    ],
)
def test_dba_assignment_by_hand(
    num_parts: int, num_attackers: int, expected: list[tuple[int, ...]]
) -> None:
    assert dba_assignment(num_parts, num_attackers) == expected


@settings(max_examples=60, deadline=None)
@given(num_parts=st.integers(1, 16), num_attackers=st.integers(1, 24))
def test_dba_assignment_covers_every_part(num_parts: int, num_attackers: int) -> None:
    assignment = dba_assignment(num_parts, num_attackers)

    stamped = [part for parts in assignment for part in parts]
    assert len(assignment) == num_attackers
    assert set(stamped) == set(range(num_parts))  # no part of the tested trigger is untrained
    if num_attackers <= num_parts:
        assert sorted(stamped) == list(range(num_parts))  # ...and none is stamped twice
    else:
        assert all(parts == (i % num_parts,) for i, parts in enumerate(assignment))


@pytest.mark.parametrize(
    ("num_parts", "num_attackers", "message"),
    [(0, 2, "num_parts"), (4, -1, "num_attackers"), (4, 1.5, "num_attackers")],
)
def test_dba_assignment_rejects_bad_counts(
    num_parts: int, num_attackers: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dba_assignment(num_parts, num_attackers)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attacker_index", "rows"), [(0, [7, 9]), (1, [8, 10])])
def test_dba_attacker_stamps_the_union_of_its_parts(attacker_index: int, rows: list[int]) -> None:
    # Prepare: 12x12 checkerboard of side 4 at the bottom right (1-pixel margin): rows and
    # columns 7..10. Four parts = one row each (7, 8, 9, 10). Two attackers: attacker 0 owns
    # parts 0 and 2 (rows 7, 9), attacker 1 parts 1 and 3 (rows 8, 10).
    trigger = checkerboard(image_size=(12, 12), size=4)
    x = torch.full((3, 1, 12, 12), 0.5)  # the checkerboard writes 0 or 1: every stamped pixel moves
    y = torch.tensor([1, 2, 3])

    # Execute
    x2, y2, poisoned = dba_poison(
        x,
        y,
        trigger=trigger,
        num_parts=4,
        poison_ratio=1.0,
        target_label=0,
        generator=torch.Generator(),
        attacker_index=attacker_index,
        num_attackers=2,
    )

    # Assert: exactly the pixels of rows `rows`, columns 7..10, carry the global pattern
    stamped = torch.zeros(12, 12, dtype=torch.bool)
    stamped[rows, 7:11] = True
    assert poisoned.all() and y2.tolist() == [0, 0, 0]
    assert torch.equal((x2 != x).any(dim=(0, 1)), stamped)
    assert torch.equal(x2[:, :, stamped], trigger.apply(x)[:, :, stamped])
    assert torch.equal(x2[:, :, ~stamped], x[:, :, ~stamped])


def test_dba_rejects_an_attacker_index_beyond_the_attackers() -> None:
    x, y = torch.full((2, 1, 12, 12), 0.5), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="attacker_index=2 must be below num_attackers=2"):
        dba_poison(
            x,
            y,
            trigger=checkerboard(image_size=(12, 12), size=4),
            num_parts=4,
            poison_ratio=1.0,
            target_label=0,
            generator=torch.Generator(),
            attacker_index=2,
            num_attackers=2,
        )


def test_split_rejects_more_parts_than_rows() -> None:
    with pytest.raises(ValueError, match="num_parts=5"):
        split(checkerboard(image_size=(12, 12), size=4), 5)


def test_blend_mixes_a_seeded_pattern_with_weight_alpha() -> None:
    trigger = blend(image_size=(6, 6), channels=3, alpha=0.25, seed=7)
    x = torch.rand(2, 3, 6, 6)

    out = trigger.apply(x)

    assert torch.allclose(out, 0.75 * x + 0.25 * trigger.pattern)
    assert torch.equal(trigger.pattern, blend(image_size=(6, 6), channels=3, seed=7).pattern)
    with pytest.raises(ValueError, match="alpha"):
        blend(image_size=(6, 6), alpha=0.0)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # y = [0, 1, 2, 1, 3, 1]; target 0, source 1, every candidate flipped
        ("all_to_one", [0, 0, 0, 0, 0, 0]),
        ("source_to_target", [0, 0, 2, 0, 3, 0]),
    ],
)
def test_label_flip_changes_exactly_the_intended_labels(mode: str, expected: list[int]) -> None:
    y = torch.tensor([0, 1, 2, 1, 3, 1])
    x = torch.rand(6, 1, 4, 4)

    x2, y2, poisoned = label_flip(
        x, y, mode=mode, num_classes=4, target_label=0, source_label=1, generator=torch.Generator()
    )

    assert y2.tolist() == expected
    assert poisoned.tolist() == [a != b for a, b in zip(y.tolist(), expected, strict=True)]
    assert torch.equal(x2, x)


def test_random_label_flip_always_picks_another_class_and_respects_the_ratio() -> None:
    y = torch.arange(100) % 5

    _, y2, poisoned = label_flip(
        torch.zeros(100, 1, 2, 2),
        y,
        mode="random",
        num_classes=5,
        poison_ratio=0.3,
        generator=torch.Generator().manual_seed(0),
    )

    assert int(poisoned.sum()) == 30
    assert (y2[poisoned] != y[poisoned]).all() and (y2[~poisoned] == y[~poisoned]).all()
    assert int(y2.max()) < 5


def test_label_flip_rejects_unknown_mode_and_missing_source() -> None:
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="mode='swap'"):
        label_flip(
            torch.zeros(4, 1, 2, 2), y, mode="swap", num_classes=3, generator=torch.Generator()
        )
    with pytest.raises(ValueError, match="source_label=None"):
        label_flip(
            torch.zeros(4, 1, 2, 2),
            y,
            mode="source_to_target",
            num_classes=3,
            generator=torch.Generator(),
        )


@pytest.mark.parametrize(
    ("mode", "kept"),
    [
        # y = [0, 1, 2, 1, 3]; target 0, source 1; image i holds the value i
        ("all_to_one", [1.0, 2.0, 3.0, 4.0]),  # every non-target image
        ("source_to_target", [1.0, 3.0]),  # the source class only
        ("random", [1.0, 2.0, 3.0, 4.0]),  # untargeted: measured as all_to_one
    ],
)
def test_relabel_testset_follows_the_mode(mode: str, kept: list[float]) -> None:
    y = torch.tensor([0, 1, 2, 1, 3])
    x = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1)

    x_bd, y_bd = relabel_testset(x, y, mode=mode, target_label=0, source_label=1)

    assert x_bd.flatten().tolist() == kept
    assert y_bd.tolist() == [0] * len(kept) and y_bd.dtype == y.dtype


def test_relabel_testset_rejects_unknown_mode_and_missing_source() -> None:
    x, y = torch.zeros(3, 1, 1, 1), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="mode='swap'"):
        relabel_testset(x, y, mode="swap", target_label=0)
    with pytest.raises(ValueError, match="source_label=None"):
        relabel_testset(x, y, mode="source_to_target", target_label=0)


# --- a single source class (Ozdayi et al. 2021) --------------------------------------------


def test_poison_dataset_with_a_source_label_poisons_only_that_class() -> None:
    # Prepare: class 1 sits at positions 1, 3, 5, 6; half of them (2) are poisoned, chosen as
    # the head of randperm(4) over those positions.
    x = torch.full((8, 1, 8, 8), 0.5)
    y = torch.tensor([0, 1, 2, 1, 3, 1, 1, 2])
    order = torch.randperm(4, generator=torch.Generator().manual_seed(3))[:2]
    expected = torch.zeros(8, dtype=torch.bool)
    expected[torch.tensor([1, 3, 5, 6])[order]] = True

    # Execute
    x2, y2, poisoned = poison_dataset(
        x,
        y,
        trigger=_trigger(),
        poison_ratio=0.5,
        target_label=7,
        generator=torch.Generator().manual_seed(3),
        source_label=1,
    )

    # Assert
    assert torch.equal(poisoned, expected)
    assert torch.all(y[poisoned] == 1) and torch.all(y2[poisoned] == 7)
    assert torch.equal(y2[~poisoned], y[~poisoned]) and torch.equal(x2[~poisoned], x[~poisoned])
    assert torch.equal(x2[poisoned], _trigger().apply(x[poisoned]))


def test_poison_count_with_a_source_label_counts_source_samples() -> None:
    x, y = torch.rand(8, 1, 8, 8), torch.tensor([0, 1, 2, 1, 3, 1, 1, 2])

    _, _, poisoned = poison_dataset(
        x,
        y,
        trigger=_trigger(),
        poison_ratio=0.0,
        target_label=7,
        generator=torch.Generator(),
        poison_count=10,
        source_label=2,
    )

    assert poisoned.tolist() == [False, False, True, False, False, False, False, True]


def test_backdoor_testset_with_a_source_label_keeps_that_class_only() -> None:
    x, y = _dataset(n=12, channels=3)  # labels 0, 1, 2, 3 repeated: class 1 at 1, 5, 9

    x_bd, y_bd = backdoor_testset(x, y, trigger=_trigger(), target_label=TARGET, source_label=1)

    assert torch.equal(x_bd, _trigger().apply(x[[1, 5, 9]]))
    assert y_bd.tolist() == [TARGET] * 3


def test_dba_part_tests_follow_the_source_label() -> None:
    trigger = checkerboard(image_size=(12, 12), size=4)
    x, y = torch.full((4, 1, 12, 12), 0.5), torch.tensor([0, 1, 2, 1])

    parts = dba_part_testsets(x, y, trigger=trigger, num_parts=2, target_label=0, source_label=1)

    assert len(parts) == 2
    for part, (x_bd, y_bd) in zip(split(trigger, 2), parts, strict=True):
        assert torch.equal(x_bd, part.apply(x[[1, 3]])) and y_bd.tolist() == [0, 0]


@pytest.mark.parametrize(("source", "message"), [(0, "equals target_label"), (-1, "non-negative")])
def test_a_bad_source_label_is_rejected(source: int, message: str) -> None:
    x, y = _dataset(n=4)
    with pytest.raises(ValueError, match=message):
        backdoor_testset(x, y, trigger=_trigger(), target_label=0, source_label=source)
    with pytest.raises(ValueError, match=message):
        poison_dataset(
            x,
            y,
            trigger=_trigger(),
            poison_ratio=1.0,
            target_label=0,
            generator=torch.Generator(),
            source_label=source,
        )


def test_edge_cases_are_the_bright_tail_of_the_source_class() -> None:
    # brightness = pixel value; source class 1: values 0.2, 0.6, 0.9 -> tail >= 0.5 is two images
    x = torch.tensor([0.2, 0.6, 0.9, 0.95]).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    y = torch.tensor([1, 1, 1, 2])

    mask = edge_case_mask(x, y, source_label=1, min_brightness=0.5)
    _, y2, poisoned = edge_case_poison(
        x, y, source_label=1, min_brightness=0.5, target_label=0, generator=torch.Generator()
    )
    x_bd, y_bd = edge_case_testset(x, y, source_label=1, min_brightness=0.5, target_label=0)

    assert mask.tolist() == [False, True, True, False]
    assert y2.tolist() == [1, 0, 0, 2] and poisoned.tolist() == mask.tolist()
    assert len(x_bd) == 2 and y_bd.tolist() == [0, 0]


@pytest.mark.parametrize(("count", "expected"), [(0, 0), (3, 3), (50, 10)])
def test_a_poison_count_replaces_the_ratio(count: int, expected: int) -> None:
    # 10 samples; a count above them poisons all.
    x, y = torch.rand(10, 1, 8, 8), torch.arange(10) % 3
    trigger = checkerboard(image_size=(8, 8), size=2)
    g = torch.Generator().manual_seed(0)

    _, y_p, poisoned = poison_dataset(
        x, y, trigger=trigger, poison_ratio=0.9, target_label=0, generator=g, poison_count=count
    )
    _, y_flip, flipped = label_flip(
        x, y, mode="all_to_one", num_classes=3, generator=g, poison_count=count
    )

    assert int(poisoned.sum()) == expected and torch.all(y_p[poisoned] == 0)
    assert int(flipped.sum()) == min(count, int((y != 0).sum()))


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_a_bad_poison_count_is_named(bad: object) -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with pytest.raises(ValueError, match="poison_count"):
        poison_dataset(
            x,
            y,
            trigger=checkerboard(image_size=(8, 8), size=2),
            poison_ratio=0.5,
            target_label=0,
            generator=torch.Generator(),
            poison_count=bad,  # type: ignore[arg-type]
        )
