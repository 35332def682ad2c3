"""Figures of what the post-training defenses found. Reads arrays (a defense's saved
``artifacts``: NumPy arrays or CPU tensors, which NumPy reads without this module importing
torch); never imports flwr.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from fedbackdoor.files import atomic_path

__all__ = ["plot_recovered_triggers"]

_FLAGGED_COLOUR = "tab:red"


def _image(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``[C, H, W]`` or ``[H, W]`` in ``[0, 1]`` -> what ``imshow`` takes, and its colour map."""
    if array.ndim == 2:
        return np.clip(array, 0, 1), "gray"
    if array.ndim == 3 and array.shape[0] == 1:
        return np.clip(array[0], 0, 1), "gray"
    if array.ndim == 3 and array.shape[0] == 3:
        return np.clip(np.transpose(array, (1, 2, 0)), 0, 1), None
    raise ValueError(f"expected an image [H, W], [1, H, W] or [3, H, W], got {array.shape}")


def plot_recovered_triggers(
    masks: ArrayLike,
    patterns: ArrayLike,
    true_trigger_image: ArrayLike | None,
    flagged: Sequence[int],
    path_stem: str | Path,
    *,
    norms: ArrayLike | None = None,
) -> list[Path]:
    """One panel per label showing its recovered trigger ``mask * pattern``, flagged labels'
    titles marked, and a last panel with the attack's true trigger.

    Parameters
    ----------
    masks : array-like
        ``[K, H, W]`` in ``[0, 1]`` (Neural Cleanse's ``artifacts["masks"]``).
    patterns : array-like
        ``[K, C, H, W]`` in ``[0, 1]`` with ``C`` 1 or 3.
    true_trigger_image : array-like or None
        ``[C, H, W]`` or ``[H, W]``: the true trigger stamped on a blank or gray image (the
        caller builds it; this module knows no attack). ``None`` leaves the panel out.
    flagged : sequence of int
        Labels Neural Cleanse flagged; their titles say so, in red.
    path_stem : str or Path
        Written to ``<path_stem>.png`` and ``<path_stem>.pdf`` (folders created; each file
        replaced atomically).
    norms : array-like, optional
        ``[K]`` mask L1 norms, printed under each label.

    Returns
    -------
    list of Path
        The PNG and the PDF.
    """
    mask_array = np.asarray(masks, dtype=np.float64)
    pattern_array = np.asarray(patterns, dtype=np.float64)
    if mask_array.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {mask_array.shape}")
    count = mask_array.shape[0]
    if pattern_array.ndim != 4 or pattern_array.shape[0] != count:
        raise ValueError(
            f"patterns must be [K, C, H, W] with K={count}, got shape {pattern_array.shape}"
        )
    if pattern_array.shape[2:] != mask_array.shape[1:]:
        raise ValueError(
            f"patterns' (H, W) {pattern_array.shape[2:]} differ from masks' {mask_array.shape[1:]}"
        )
    norm_values = None if norms is None else np.asarray(norms, dtype=np.float64).reshape(-1)
    if norm_values is not None and norm_values.shape[0] != count:
        raise ValueError(f"norms has {norm_values.shape[0]} values for {count} labels")
    marked = {int(k) for k in flagged}
    if not marked <= set(range(count)):
        raise ValueError(f"flagged labels {sorted(marked)} outside 0..{count - 1}")

    fused = mask_array[:, None] * pattern_array  # [K, C, H, W]: what a trigger writes
    panels = count + (true_trigger_image is not None)
    columns = min(panels, 6)
    rows = -(-panels // columns)
    with matplotlib.rc_context({"font.size": 7, "axes.titlesize": 7, "pdf.fonttype": 42}):
        fig = Figure(figsize=(1.2 * columns, 1.35 * rows), layout="constrained")
        axes: list[Axes] = list(np.asarray(fig.subplots(rows, columns, squeeze=False)).ravel())
        for label in range(count):
            image, cmap = _image(fused[label])
            ax = axes[label]
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            title = f"label {label}" + (" (flagged)" if label in marked else "")
            if norm_values is not None:
                title += f"\nL1 {norm_values[label]:.3g}"
            ax.set_title(title, color=_FLAGGED_COLOUR if label in marked else "black")
        if true_trigger_image is not None:
            image, cmap = _image(np.asarray(true_trigger_image, dtype=np.float64))
            if image.shape[:2] != mask_array.shape[1:]:
                raise ValueError(
                    f"true_trigger_image's (H, W) {image.shape[:2]} differ from the masks' "
                    f"{mask_array.shape[1:]}"
                )
            axes[count].imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            axes[count].set_title("true trigger")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[panels:]:
            ax.set_axis_off()
        stem = Path(path_stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        written = []
        for suffix in ("png", "pdf"):
            path = stem.with_name(f"{stem.name}.{suffix}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=suffix, dpi=200)
            written.append(path)
    return written
