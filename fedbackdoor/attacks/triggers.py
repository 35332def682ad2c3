"""Pixel-space backdoor triggers.

A trigger is a mask and a pattern stamped onto whole batches of images, ``x * (1 - mask) + pattern
* mask``. The same :class:`Trigger` object is applied by malicious clients when they poison their
data and by the server when it measures backdoor accuracy, so the two can never disagree.

Images are float tensors in ``[0, 1]`` of shape ``[B, C, H, W]``; normalisation happens inside the
model, so triggers live in pixel space.

References
----------
.. [1] T. Gu, B. Dolan-Gavitt and S. Garg, "BadNets: Identifying Vulnerabilities in the Machine
   Learning Model Supply Chain", arXiv:1708.06733, 2017.
.. [2] X. Chen, C. Liu, B. Li, K. Lu and D. Song, "Targeted Backdoor Attacks on Deep Learning
   Systems Using Data Poisoning", arXiv:1712.05526, 2017 (blended injection).
.. [3] C. Xie, K. Huang, P.-Y. Chen and B. Li, "DBA: Distributed Backdoor Attacks against
   Federated Learning", ICLR 2020.
.. [4] E. Bagdasaryan and V. Shmatikov, "Mithridates: Auditing and Boosting Backdoor Resistance
   of Machine Learning Pipelines", ACM CCS 2024, arXiv:2302.04977 (the primitive sub-task).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsIndex

import torch
from torch import Tensor

from fedbackdoor.data.image_data import image_size_pair

__all__ = [
    "LOCATIONS",
    "Trigger",
    "blend",
    "checkerboard",
    "pattern",
    "primitive",
    "split",
    "square",
]

#: Named placements of a square trigger; the corner names keep a 1-pixel margin from the border.
LOCATIONS: tuple[str, ...] = ("bottom_right", "top_left", "top_right", "bottom_left", "center")

_MARGIN = 1


# eq=False: the generated __eq__ would compare tensors element-wise and fail on `bool(...)`;
# identity equality (and hashing) is what a frozen holder of tensors can honestly offer.
@dataclass(frozen=True, eq=False)
class Trigger:
    """A backdoor trigger: which pixels to overwrite and with what.

    Parameters
    ----------
    mask : Tensor
        ``[H, W]`` float in ``[0, 1]``; 1 marks a trigger pixel, 0 leaves the image untouched and a
        fractional value blends the pattern in.
    pattern : Tensor
        ``[C, H, W]`` or ``[1, H, W]`` values in ``[0, 1]``; a single channel is broadcast over the
        image's channels.

    Notes
    -----
    Both tensors are copied on construction, so later in-place edits of the caller's tensors do not
    change the trigger. With a binary mask, applying the trigger is idempotent and leaves every
    unmasked pixel bit-identical.
    """

    mask: Tensor
    pattern: Tensor

    def __post_init__(self) -> None:
        mask, pattern = self.mask, self.pattern
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            raise ValueError(f"mask must be a [H, W] tensor, got {_describe(mask)}")
        if not isinstance(pattern, Tensor) or pattern.dim() != 3:
            raise ValueError(f"pattern must be a [C, H, W] tensor, got {_describe(pattern)}")
        if pattern.shape[-2:] != mask.shape:
            raise ValueError(
                f"pattern's spatial shape {tuple(pattern.shape[-2:])} does not match mask's "
                f"{tuple(mask.shape)}"
            )
        for name, tensor in (("mask", mask), ("pattern", pattern)):
            if tensor.numel() and not bool(((tensor >= 0) & (tensor <= 1)).all()):
                raise ValueError(f"{name} values must lie in [0, 1]")
        # Frozen dataclass: object.__setattr__ is the sanctioned way to normalise fields.
        object.__setattr__(self, "mask", mask.detach().to(torch.float32).clone())
        object.__setattr__(self, "pattern", pattern.detach().to(torch.float32).clone())

    @property
    def image_size(self) -> tuple[int, int]:
        """The ``(H, W)`` this trigger is defined for."""
        height, width = self.mask.shape
        return int(height), int(width)

    def apply(self, x: Tensor) -> Tensor:
        """Stamp the trigger onto a batch of images.

        Parameters
        ----------
        x : Tensor
            ``[B, C, H, W]`` images in ``[0, 1]``. Not modified.

        Returns
        -------
        Tensor
            A new tensor ``x * (1 - mask) + pattern * mask`` of the same shape, dtype and device.

        Raises
        ------
        ValueError
            If ``x`` is not 4-D, its ``(H, W)`` differ from the trigger's, or the pattern has
            neither 1 nor ``C`` channels.
        """
        if x.dim() != 4:
            raise ValueError(f"expected images of shape [B, C, H, W], got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"trigger of shape {self.image_size} (H, W) does not match images of shape "
                f"{tuple(x.shape)} (B, C, H, W)"
            )
        channels = self.pattern.shape[0]
        if channels not in (1, x.shape[1]):
            raise ValueError(
                f"trigger pattern has {channels} channels, images have {x.shape[1]} "
                f"(pattern {tuple(self.pattern.shape)}, images {tuple(x.shape)})"
            )
        mask = self.mask.to(device=x.device, dtype=x.dtype)
        pattern = self.pattern.to(device=x.device, dtype=x.dtype)
        return x * (1 - mask) + pattern * mask

    __call__ = apply


def square(
    *,
    image_size: Sequence[int],
    size: int = 4,
    location: str | Sequence[int] = "bottom_right",
    value: float = 1.0,
) -> Trigger:
    """A solid square trigger, as in BadNets [1]_.

    Parameters
    ----------
    image_size : sequence of two ints
        ``(H, W)`` of the images the trigger will be stamped on.
    size : int
        Side of the square in pixels.
    location : str or (int, int)
        One of :data:`LOCATIONS` (corner names keep a 1-pixel margin from the border; ``"center"``
        rounds towards the top left) or the explicit ``(row, col)`` of the square's top-left pixel.
    value : float
        Intensity in ``[0, 1]`` written to every channel of the square.

    Returns
    -------
    Trigger
        Binary mask over the square, single-channel pattern.

    Raises
    ------
    ValueError
        For a non-positive size, a square that does not fit the image, an unknown location or a
        value outside ``[0, 1]``.
    """
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"value must lie in [0, 1], got {value}")
    mask, _, _ = _square_mask(image_size, size, location)
    return Trigger(mask=mask, pattern=(mask * value).unsqueeze(0))


def checkerboard(
    *,
    image_size: Sequence[int],
    size: int = 4,
    location: str | Sequence[int] = "bottom_right",
) -> Trigger:
    """A black-and-white checkerboard square, the BadNets pixel-pattern trigger [1]_.

    The whole square is masked, so its dark cells are written too (set to 0) rather than left to
    the image underneath. The square's top-left pixel is white (1) and colours alternate along rows
    and columns.

    Parameters
    ----------
    image_size : sequence of two ints
        ``(H, W)`` of the images the trigger will be stamped on.
    size : int
        Side of the square in pixels.
    location : str or (int, int)
        As in :func:`square`.

    Returns
    -------
    Trigger
        Binary mask over the square, single-channel 1/0 pattern.

    Raises
    ------
    ValueError
        For a non-positive size, a square that does not fit the image or an unknown location.
    """
    mask, top, left = _square_mask(image_size, size, location)
    height, width = mask.shape
    # Parity relative to the square's corner, so the pattern does not depend on where it sits.
    rows = torch.arange(height).unsqueeze(1) - top
    cols = torch.arange(width).unsqueeze(0) - left
    white = ((rows + cols) % 2 == 0).to(torch.float32)
    return Trigger(mask=mask, pattern=(white * mask).unsqueeze(0))


def _square_mask(
    image_size: Sequence[int], size: int, location: str | Sequence[int]
) -> tuple[Tensor, int, int]:
    """Binary ``[H, W]`` mask of the square and the (row, col) of its top-left pixel."""
    height, width = image_size_pair(image_size)
    size = _positive_int("size", size)
    if size > min(height, width):
        raise ValueError(f"size={size} is larger than the image ({height}, {width})")
    top, left = _top_left((height, width), size, location)
    mask = torch.zeros(height, width, dtype=torch.float32)
    mask[top : top + size, left : left + size] = 1.0
    return mask, top, left


def _top_left(
    image_size: tuple[int, int], size: int | tuple[int, int], location: str | Sequence[int]
) -> tuple[int, int]:
    """Top-left pixel of a ``size`` (side, or (rows, cols)) block placed at ``location``."""
    height, width = image_size
    rows, cols = (size, size) if isinstance(size, int) else size
    shown = size if isinstance(size, int) else f"{rows}x{cols}"
    if isinstance(location, str):
        if location not in LOCATIONS:
            raise ValueError(
                f"unknown location {location!r}; use one of {', '.join(LOCATIONS)} "
                f"or an explicit (row, col)"
            )
        if location == "center":
            return (height - rows) // 2, (width - cols) // 2
        if rows + 2 * _MARGIN > height or cols + 2 * _MARGIN > width:
            raise ValueError(
                f"size={shown} leaves no {_MARGIN}-pixel margin in a ({height}, {width}) image "
                f"for location {location!r}; use a smaller size, 'center' or an explicit (row, col)"
            )
        near_row, near_col = _MARGIN, _MARGIN
        far_row, far_col = height - _MARGIN - rows, width - _MARGIN - cols
        return {
            "top_left": (near_row, near_col),
            "top_right": (near_row, far_col),
            "bottom_left": (far_row, near_col),
            "bottom_right": (far_row, far_col),
        }[location]
    row, col = _int_pair("location", location)
    if not (0 <= row <= height - rows and 0 <= col <= width - cols):
        raise ValueError(
            f"a block of size {shown} at (row, col)=({row}, {col}) does not fit in a "
            f"({height}, {width}) image"
        )
    return row, col


def _int_pair(name: str, value: object) -> tuple[int, int]:
    # Hydra hands over ListConfig, so accept any length-2 sequence of integers.
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair of ints, got {value!r}")
    try:
        first, second = (operator.index(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be a pair of ints, got {value!r}") from None
    return first, second


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ValueError(f"{name} must be an int, got {value!r}")
    number = operator.index(value)
    if number <= 0:
        raise ValueError(f"{name} must be positive, got {number}")
    return number


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)}"
    return type(value).__name__


def pattern(
    *,
    image_size: Sequence[int],
    pattern: Sequence[Sequence[float | None]],
    location: str | Sequence[int] = "bottom_right",
) -> Trigger:
    """A user-given pixel pattern, stamped at ``location`` (BadNets with your own trigger [1]_).

    Parameters
    ----------
    image_size : sequence of two ints
        ``(H, W)`` of the images the trigger will be stamped on.
    pattern : sequence of rows
        A rectangular grid of pixel values in ``[0, 1]`` (the same on every channel); ``None``
        (``null`` in YAML) marks a transparent cell that leaves the image as it is. E.g.
        ``[[1, 0, 1], [null, 1, null], [1, 0, 1]]``.
    location : str or (int, int)
        As in :func:`square`, for the pattern's bounding box.

    Returns
    -------
    Trigger
        Mask 1 on the pattern's non-transparent cells.

    Raises
    ------
    ValueError
        For a ragged or empty grid, a value outside ``[0, 1]``, a grid with no opaque cell, or a
        box that does not fit the image.
    """
    height, width = image_size_pair(image_size)
    rows = [list(row) for row in pattern]
    if not rows or not rows[0] or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError(f"pattern must be a non-empty rectangular grid, got {pattern!r}")
    cells = [v for row in rows for v in row]
    for value in cells:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
        ):
            raise ValueError(f"pattern values must be in [0, 1] or null, got {value!r}")
    if all(v is None for v in cells):
        raise ValueError("pattern has no opaque cell (all null)")
    box = (len(rows), len(rows[0]))
    if box[0] > height or box[1] > width:
        raise ValueError(f"pattern of size {box} is larger than the image ({height}, {width})")
    top, left = _top_left((height, width), box, location)
    opaque = torch.tensor([[v is not None for v in row] for row in rows], dtype=torch.float32)
    values = torch.tensor([[0.0 if v is None else float(v) for v in row] for row in rows])
    mask = torch.zeros(height, width, dtype=torch.float32)
    image = torch.zeros(height, width, dtype=torch.float32)
    mask[top : top + box[0], left : left + box[1]] = opaque
    image[top : top + box[0], left : left + box[1]] = values * opaque
    return Trigger(mask=mask, pattern=image.unsqueeze(0))


def blend(
    *, image_size: Sequence[int], channels: int = 1, alpha: float = 0.2, seed: int = 0
) -> Trigger:
    """A full-image random pattern blended in with weight ``alpha`` (blended injection [2]_).

    ``x' = (1 - alpha) x + alpha p`` with ``p`` uniform noise in ``[0, 1]`` drawn from ``seed``,
    so attackers and the server's test share the pattern without exchanging it.
    """
    height, width = image_size_pair(image_size)
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    channels = _positive_int("channels", channels)
    generator = torch.Generator().manual_seed(int(seed))
    pattern = torch.rand(channels, height, width, generator=generator)
    return Trigger(mask=torch.full((height, width), alpha), pattern=pattern)


def primitive(
    *, image_size: Sequence[int], channels: int, cover: float = 0.05, seed: int = 0
) -> Trigger:
    """Mithridates' primitive sub-task [4]_: a random binary pattern over one contiguous run of
    pixels, a backdoor easier to learn than any real one (their strong baseline).

    Parameters
    ----------
    image_size : sequence of two ints
        ``(H, W)`` of the images the trigger will be stamped on.
    channels : int
        Channels of the pattern, ``C``.
    cover : float
        Share of the pixels in the run, in ``(0, 1]``: the run is ``max(1, int(H * W * cover))``
        pixels long.
    seed : int
        Seeds the pattern and the run's start, so malicious clients and the server's backdoor
        test build the identical trigger without exchanging it.

    Returns
    -------
    Trigger
        Mask 1 on the run, 0 elsewhere; a ``[C, H, W]`` pattern of 0s and 1s.

    Raises
    ------
    ValueError
        For a ``cover`` outside ``(0, 1]``, a non-positive ``channels`` or a bad ``image_size``.

    Notes
    -----
    The pattern is drawn first, each value 1 or 0 with probability 1/2 (``rand > 0.5``) for
    every channel and pixel, then the run's start, uniformly from every start at which the run
    fits: ``[0, H * W - run]``, inclusive, counting pixels in row-major order (the run wraps
    from the end of one row to the start of the next). Both come from one
    ``torch.Generator().manual_seed(seed)``, never the global RNG. With ``cover = 1`` the run
    is the whole image (start 0).

    Deviations from their ``PrimitiveSynthesizer``
    (github.com/ebagdasa/mithridates, ``mithridates/synthesizers/primitive_synthesizer.py``):
    their mask is a run over the flattened ``C * H * W`` input elements, so a run can cover
    some channels of a pixel and not others; our :class:`Trigger` has one ``[H, W]`` mask
    shared by the channels, so the run and ``cover`` count pixels (all channels of each).
    Their start is ``np.random.randint(0, total - run - 1)``, whose upper bound is exclusive:
    it never uses the last two starts that fit (and fails when the run is the whole input);
    we allow every start that fits. Their pattern values are ``max_val``/``min_val`` of the
    normalised input; ours are 1/0 in pixel space, as for every trigger here.
    """
    height, width = image_size_pair(image_size)
    channels = _positive_int("channels", channels)
    cover = float(cover)
    if not 0.0 < cover <= 1.0:  # also refuses NaN
        raise ValueError(f"cover={cover} must lie in (0, 1] (a share of the pixels)")
    pixels = height * width
    run = max(1, int(pixels * cover))  # cover <= 1, so run <= pixels
    generator = torch.Generator().manual_seed(int(seed))
    values = (torch.rand(channels, height, width, generator=generator) > 0.5).to(torch.float32)
    start = int(torch.randint(0, pixels - run + 1, (1,), generator=generator))
    mask = torch.zeros(pixels, dtype=torch.float32)
    mask[start : start + run] = 1.0
    return Trigger(mask=mask.view(height, width), pattern=values)


def split(trigger: Trigger, num_parts: int) -> list[Trigger]:
    """Cut a trigger into ``num_parts`` local triggers for a distributed backdoor attack [3]_.

    The rows of the trigger's footprint (the bounding box of its non-zero mask) are dealt into
    ``num_parts`` horizontal bands of (nearly) equal height, like DBA's four bars; each part keeps
    the global pattern and the mask of its band. The parts are disjoint and their masks add up to
    the global mask exactly.
    """
    num_parts = _positive_int("num_parts", num_parts)
    rows = torch.nonzero(trigger.mask.sum(dim=1) > 0).flatten()
    if rows.numel() < num_parts:
        raise ValueError(
            f"num_parts={num_parts} exceeds the {rows.numel()} rows the trigger covers"
        )
    parts = []
    for band in torch.tensor_split(rows, num_parts):
        mask = torch.zeros_like(trigger.mask)
        mask[band] = trigger.mask[band]
        parts.append(Trigger(mask=mask, pattern=trigger.pattern))
    return parts
