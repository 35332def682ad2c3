"""Tests for fedbackdoor.attacks.triggers."""

from __future__ import annotations

import pytest
import torch

from fedbackdoor.attacks.triggers import (
    LOCATIONS,
    Trigger,
    checkerboard,
    pattern,
    primitive,
    square,
)

# A 3x3 square in an 8x8 image, worked out by hand: corner names keep a 1-pixel margin, so the far
# edge starts at 8 - 1 - 3 = 4; "center" starts at (8 - 3) // 2 = 2.
EXPECTED_ROWS_COLS = {
    "top_left": ([1, 2, 3], [1, 2, 3]),
    "top_right": ([1, 2, 3], [4, 5, 6]),
    "bottom_left": ([4, 5, 6], [1, 2, 3]),
    "bottom_right": ([4, 5, 6], [4, 5, 6]),
    "center": ([2, 3, 4], [2, 3, 4]),
    (0, 5): ([0, 1, 2], [5, 6, 7]),
}


def _images(batch: int = 2, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Strictly inside (0, 1) so that no clean pixel happens to equal the trigger's 0 or 1.
    return torch.rand(batch, channels, size, size, generator=generator) * 0.8 + 0.1


def test_named_locations_cover_the_documented_names() -> None:
    assert set(LOCATIONS) == {"bottom_right", "top_left", "top_right", "bottom_left", "center"}


@pytest.mark.parametrize("location", list(EXPECTED_ROWS_COLS))
def test_square_stamps_exactly_the_hand_counted_pixels(location: str | tuple[int, int]) -> None:
    # Prepare
    rows, cols = EXPECTED_ROWS_COLS[location]
    expected = {(r, c) for r in rows for c in cols}
    x = _images()
    trigger = square(image_size=(8, 8), size=3, location=location, value=1.0)

    # Execute
    out = trigger.apply(x)

    # Assert
    changed = (out != x).any(dim=(0, 1)).nonzero().tolist()
    assert {(r, c) for r, c in changed} == expected
    assert len(changed) == 9
    assert int(trigger.mask.sum()) == 9
    for r, c in expected:
        assert torch.all(out[:, :, r, c] == 1.0)
    untouched = torch.ones(8, 8, dtype=torch.bool)
    for r, c in expected:
        untouched[r, c] = False
    assert torch.equal(out[:, :, untouched], x[:, :, untouched])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("make", [square, checkerboard])
def test_trigger_works_on_any_channel_count_and_keeps_shape_dtype(channels: int, make) -> None:
    # Prepare
    x = _images(channels=channels)
    trigger = make(image_size=[8, 8], size=3, location="bottom_right")

    # Execute
    out = trigger(x)

    # Assert
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    expected = trigger.pattern[0].expand(2, channels, 8, 8)
    mask = trigger.mask.bool()
    assert torch.equal(out[:, :, mask], expected[:, :, mask])


def test_apply_is_idempotent_and_does_not_modify_its_input() -> None:
    # Prepare
    x = _images()
    before = x.clone()
    trigger = checkerboard(image_size=(8, 8), size=4, location="center")

    # Execute
    once = trigger.apply(x)
    twice = trigger.apply(once)

    # Assert
    assert torch.equal(once, twice)
    assert torch.equal(x, before)
    assert once.data_ptr() != x.data_ptr()


def test_per_channel_pattern_is_written_channel_by_channel() -> None:
    # Prepare
    mask = torch.zeros(4, 4)
    mask[0, 0] = 1.0
    pattern = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 4, 4)
    trigger = Trigger(mask=mask, pattern=pattern)
    x = torch.full((1, 3, 4, 4), 0.25)

    # Execute
    out = trigger.apply(x)

    # Assert
    assert out[0, :, 0, 0].tolist() == [0.0, 0.5, 1.0]
    assert torch.all(out[0, :, 1:, :] == 0.25)


def test_trigger_copies_its_tensors() -> None:
    # Prepare
    mask = torch.ones(4, 4)
    pattern = torch.ones(1, 4, 4)
    trigger = Trigger(mask=mask, pattern=pattern)

    # Execute
    mask.zero_()
    pattern.zero_()

    # Assert
    assert torch.all(trigger.mask == 1) and torch.all(trigger.pattern == 1)


def test_checkerboard_alternates_from_a_white_corner() -> None:
    # Prepare
    trigger = checkerboard(image_size=(8, 8), size=4, location=(2, 3))

    # Execute
    patch = trigger.pattern[0, 2:6, 3:7]

    # Assert
    assert patch.tolist() == [
        [1.0, 0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 1.0],
    ]
    assert torch.all(patch[:, 1:] != patch[:, :-1])
    assert torch.all(patch[1:, :] != patch[:-1, :])
    assert torch.all(trigger.mask[2:6, 3:7] == 1) and int(trigger.mask.sum()) == 16


def test_checkerboard_writes_its_dark_cells_too() -> None:
    # Prepare
    x = torch.full((1, 1, 8, 8), 0.5)
    trigger = checkerboard(image_size=(8, 8), size=2, location="top_left")

    # Execute
    out = trigger.apply(x)

    # Assert
    assert out[0, 0, 1:3, 1:3].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_square_value_sets_the_intensity() -> None:
    trigger = square(image_size=(8, 8), size=2, location="top_left", value=0.3)

    out = trigger.apply(torch.zeros(1, 1, 8, 8))

    assert torch.allclose(out[0, 0, 1:3, 1:3], torch.full((2, 2), 0.3))
    assert float(out.sum()) == pytest.approx(4 * 0.3)


def test_apply_rejects_images_of_another_size_naming_both_shapes() -> None:
    trigger = square(image_size=(8, 8), size=3)

    with pytest.raises(ValueError, match=r"\(8, 8\).*\(2, 3, 6, 6\)"):
        trigger.apply(torch.zeros(2, 3, 6, 6))


def test_apply_rejects_non_batched_images() -> None:
    trigger = square(image_size=(8, 8), size=3)

    with pytest.raises(ValueError, match="B, C, H, W"):
        trigger.apply(torch.zeros(3, 8, 8))


def test_apply_rejects_pattern_with_wrong_channel_count() -> None:
    trigger = Trigger(mask=torch.ones(4, 4), pattern=torch.ones(2, 4, 4))

    with pytest.raises(ValueError, match="channels"):
        trigger.apply(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize(
    ("mask", "pattern", "message"),
    [
        (torch.ones(1, 4, 4), torch.ones(1, 4, 4), "mask"),
        (torch.ones(4, 4), torch.ones(4, 4), "pattern"),
        (torch.ones(4, 4), torch.ones(1, 4, 5), "spatial shape"),
        (torch.full((4, 4), 2.0), torch.ones(1, 4, 4), r"mask values"),
        (torch.ones(4, 4), torch.full((1, 4, 4), -0.1), r"pattern values"),
    ],
)
def test_trigger_rejects_malformed_tensors(
    mask: torch.Tensor, pattern: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Trigger(mask=mask, pattern=pattern)


@pytest.mark.parametrize("make", [square, checkerboard])
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"size": 0}, "size must be positive"),
        ({"size": -2}, "size must be positive"),
        ({"size": 2.5}, "size must be an int"),
        ({"size": 9}, "larger than the image"),
        ({"size": 7, "location": "bottom_right"}, "margin"),
        ({"location": "middle"}, "bottom_right, top_left, top_right, bottom_left, center"),
        ({"location": (6, 0)}, "does not fit"),
        ({"location": (-1, 0)}, "does not fit"),
        ({"location": (1, 2, 3)}, "pair of ints"),
        ({"image_size": (8,)}, "pair of ints"),
        ({"image_size": (0, 8)}, "positive"),
    ],
)
def test_factories_reject_bad_settings(make, settings: dict, message: str) -> None:
    kwargs = {"image_size": (8, 8), "size": 3, "location": "bottom_right", **settings}

    with pytest.raises(ValueError, match=message):
        make(**kwargs)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_square_rejects_value_outside_unit_interval(value: float) -> None:
    with pytest.raises(ValueError, match="value must lie in"):
        square(image_size=(8, 8), size=3, value=value)


def test_full_size_square_fits_only_without_margin() -> None:
    centred = square(image_size=(8, 8), size=8, location="center")
    explicit = square(image_size=(8, 8), size=8, location=(0, 0))

    assert torch.all(centred.mask == 1) and torch.all(explicit.mask == 1)


def test_user_pattern_by_hand() -> None:
    # A 2x3 pattern with one transparent cell, at (row, col) = (1, 2) in a 4x6 image.
    trigger = pattern(image_size=(4, 6), pattern=[[1, 0, None], [0.5, 1, 0]], location=(1, 2))
    x = torch.full((1, 1, 4, 6), 0.25)

    stamped = trigger.apply(x)[0, 0]

    expected = torch.full((4, 6), 0.25)
    expected[1, 2], expected[1, 3] = 1.0, 0.0  # (1, 4) is transparent: stays 0.25
    expected[2, 2], expected[2, 3], expected[2, 4] = 0.5, 1.0, 0.0
    assert torch.equal(stamped, expected)
    assert int(trigger.mask.sum()) == 5


def test_user_pattern_named_location_keeps_the_margin() -> None:
    trigger = pattern(image_size=(8, 8), pattern=[[1, 1, 1]], location="bottom_right")
    assert trigger.mask[6, 4:7].tolist() == [1.0, 1.0, 1.0] and int(trigger.mask.sum()) == 3


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([[1, 0], [1]], "rectangular"),
        ([], "rectangular"),
        ([[1.5]], "1.5"),
        ([[None, None]], "no opaque"),
        ([[1] * 9], "larger than the image"),
    ],
)
def test_user_pattern_rejects_bad_grids(grid: list[list[float | None]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pattern(image_size=(8, 8), pattern=grid, location="center")


def test_primitive_masks_a_run_of_the_hand_counted_length() -> None:
    # 28 x 28 = 784 pixels, cover 0.05: int(784 * 0.05) = int(39.2) = 39 pixels
    trigger = primitive(image_size=(28, 28), channels=1, cover=0.05, seed=0)

    assert trigger.mask.shape == (28, 28)
    assert int(trigger.mask.sum()) == 39
    assert set(trigger.mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("seed", range(5))
def test_primitive_run_is_contiguous_in_row_major_order(seed: int) -> None:
    trigger = primitive(image_size=(10, 12), channels=1, cover=0.2, seed=seed)

    on = trigger.mask.flatten().nonzero().flatten()

    assert on.numel() == 24  # int(120 * 0.2)
    assert torch.equal(on, torch.arange(int(on[0]), int(on[0]) + 24))


def test_primitive_run_starts_anywhere_it_fits() -> None:
    # 2 x 3 image, run of 5 pixels: starts 0 and 1 fit (Mithridates' bound would allow 0 only)
    starts = set()
    for seed in range(40):
        trigger = primitive(image_size=(2, 3), channels=1, cover=5 / 6, seed=seed)
        starts.add(int(trigger.mask.flatten().nonzero()[0]))

    assert starts == {0, 1}


def test_primitive_pattern_is_binary_per_channel_and_pixel() -> None:
    trigger = primitive(image_size=(32, 32), channels=3, seed=7)

    assert trigger.pattern.shape == (3, 32, 32)
    assert set(trigger.pattern.unique().tolist()) == {0.0, 1.0}
    assert 0.4 < float(trigger.pattern.mean()) < 0.6  # a fair coin over 3072 values
    assert not torch.equal(trigger.pattern[0], trigger.pattern[1])  # channels drawn apart


def test_primitive_is_a_function_of_its_seed_only() -> None:
    torch.manual_seed(0)
    first = primitive(image_size=(28, 28), channels=3, seed=11)
    torch.manual_seed(1)  # the global RNG plays no part
    again = primitive(image_size=(28, 28), channels=3, seed=11)
    other = primitive(image_size=(28, 28), channels=3, seed=12)

    assert torch.equal(first.mask, again.mask) and torch.equal(first.pattern, again.pattern)
    assert not torch.equal(first.mask, other.mask)  # runs start at pixels 77 and 569
    assert not torch.equal(first.pattern, other.pattern)


def test_primitive_stamps_every_channel_of_the_run_only() -> None:
    # Prepare
    x = _images(channels=3)
    trigger = primitive(image_size=(8, 8), channels=3, cover=0.25, seed=2)
    run = trigger.mask.bool()

    # Execute
    out = trigger.apply(x)

    # Assert
    assert int(run.sum()) == 16
    assert torch.equal(out[:, :, run], trigger.pattern[:, run].expand(2, 3, 16))
    assert torch.equal(out[:, :, ~run], x[:, :, ~run])


def test_primitive_cover_one_is_the_whole_image() -> None:
    trigger = primitive(image_size=(5, 7), channels=1, cover=1.0, seed=3)

    assert torch.all(trigger.mask == 1)


def test_primitive_tiny_cover_still_masks_one_pixel() -> None:
    trigger = primitive(image_size=(8, 8), channels=1, cover=0.001)

    assert int(trigger.mask.sum()) == 1  # max(1, int(0.064))


@pytest.mark.parametrize("cover", [0.0, -0.1, 1.5, float("nan")])
def test_primitive_rejects_a_cover_outside_the_unit_interval(cover: float) -> None:
    with pytest.raises(ValueError, match=rf"cover={cover}"):
        primitive(image_size=(8, 8), channels=1, cover=cover)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"channels": 0}, "channels must be positive"), ({"image_size": (8,)}, "pair of ints")],
)
def test_primitive_rejects_bad_shapes(settings: dict, message: str) -> None:
    kwargs = {"image_size": (8, 8), "channels": 1, **settings}

    with pytest.raises(ValueError, match=message):
        primitive(**kwargs)
