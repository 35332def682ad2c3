"""Model state as flat vectors: a model's trainable parameters (what an update is) and its
buffers, carried beside them.

An *update* is a parameter delta: defenses, update attacks, boosts, norm bounds, distances and
cosines see the model's **trainable parameters** only, as one float32 vector. Everything else in
a ``state_dict`` (BatchNorm's running statistics, its integer ``num_batches_tracked``) is a
*buffer*: buffers travel beside the parameters as a second, float64 vector that no defense or
attack ever sees (:meth:`Layout.flatten_buffers`), and the server sets the global model's
buffers by one documented rule (:mod:`fedbackdoor.server_step`). A :class:`Layout` remembers how
to cut both vectors back into the named, shaped and typed entries of a ``state_dict``; integer
buffers are rounded back.

Why: flattened whole, a ResNet-18 update after three local steps is 84.6 % step counters and
15.3 % running statistics by squared norm; norm clipping, cosine and distance rules, boosts and
PGD bounds would then act on numbers that do not change what the model computes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Layout", "LayoutMismatch", "trainable_names"]


class LayoutMismatch(ValueError):
    """A client's arrays do not have the global model's keys, shapes or a numeric dtype."""


def trainable_names(model: nn.Module) -> frozenset[str]:
    """The ``state_dict`` keys of ``model``'s trainable parameters (``requires_grad``)."""
    return frozenset(name for name, p in model.named_parameters() if p.requires_grad)


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of a model's ``state_dict``, in order, and which entries are
    trainable parameters (the update vector) and which are buffers (carried beside it)."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    trainable: tuple[bool, ...]

    @property
    def dim(self) -> int:
        """Coordinates of the parameter vector (the update defenses see)."""
        return sum(_size(s) for s, t in zip(self.shapes, self.trainable, strict=True) if t)

    @property
    def buffer_dim(self) -> int:
        """Coordinates of the buffer vector (running statistics, counters)."""
        return sum(_size(s) for s, t in zip(self.shapes, self.trainable, strict=True) if not t)

    @classmethod
    def of(cls, state: Mapping[str, Tensor], trainable: Collection[str]) -> Layout:
        """The layout of ``state``; ``trainable`` names its parameter entries (see
        :func:`trainable_names`), every other entry is a buffer.

        Raises
        ------
        ValueError
            If ``trainable`` names a key ``state`` lacks, or a non-floating entry.
        """
        unknown = sorted(set(trainable) - set(state))
        if unknown:
            raise ValueError(f"trainable names {unknown} are not in the state_dict")
        integral = sorted(k for k in trainable if not state[k].is_floating_point())
        if integral:
            raise ValueError(f"trainable entries {integral} are not floating point")
        return cls(
            keys=tuple(state),
            shapes=tuple(tuple(t.shape) for t in state.values()),
            dtypes=tuple(t.dtype for t in state.values()),
            trainable=tuple(k in trainable for k in state),
        )

    def check(self, state: Mapping[str, Tensor | np.ndarray]) -> None:
        """Raise :class:`LayoutMismatch` unless ``state`` has this layout's keys (in order),
        shapes and real dtypes."""
        if tuple(state) != self.keys:
            missing = sorted(set(self.keys) - set(state))
            extra = sorted(set(state) - set(self.keys))
            raise LayoutMismatch(
                f"keys differ from the global model: missing {missing}, unexpected {extra}"
            )
        for key, shape, value in zip(self.keys, self.shapes, state.values(), strict=True):
            if tuple(value.shape) != shape:
                raise LayoutMismatch(f"{key}: shape {tuple(value.shape)} != expected {shape}")
            if not _real(value):
                raise LayoutMismatch(f"{key}: dtype {value.dtype} is not real-valued")

    def flatten(
        self, state: Mapping[str, Tensor | np.ndarray], out: Tensor | None = None
    ) -> Tensor:
        """The trainable parameters of ``state`` (tensors or numpy arrays) as one float32
        vector, checking keys, shapes and dtypes; into ``out`` (a float32 ``[dim]`` tensor,
        e.g. a row of a preallocated buffer) if given."""
        self.check(state)
        return _gather(state, self.trainable, True, self.dim, torch.float32, out)

    def flatten_buffers(
        self, state: Mapping[str, Tensor | np.ndarray], out: Tensor | None = None
    ) -> Tensor:
        """The buffers of ``state`` as one float64 vector ``[buffer_dim]`` (float64 holds every
        integer counter exactly); into ``out`` if given."""
        self.check(state)
        return _gather(state, self.trainable, False, self.buffer_dim, torch.float64, out)

    def unflatten(self, params: Tensor, buffers: Tensor | None = None) -> dict[str, Tensor]:
        """A ``state_dict`` from a parameter vector and a buffer vector, with the original shapes
        and dtypes (integer buffers rounded). ``buffers`` may be omitted only if there are none.
        """
        if params.shape != (self.dim,):
            raise LayoutMismatch(
                f"parameter vector has shape {tuple(params.shape)}, expected ({self.dim},)"
            )
        if buffers is None:
            if self.buffer_dim:
                raise LayoutMismatch(f"the model has {self.buffer_dim} buffer values: pass them")
            buffers = torch.zeros(0, dtype=torch.float64)
        if buffers.shape != (self.buffer_dim,):
            raise LayoutMismatch(
                f"buffer vector has shape {tuple(buffers.shape)}, expected ({self.buffer_dim},)"
            )
        sources = {True: params.detach().cpu(), False: buffers.detach().cpu()}
        offsets = {True: 0, False: 0}
        out: dict[str, Tensor] = {}
        for key, shape, dtype, trainable in zip(
            self.keys, self.shapes, self.dtypes, self.trainable, strict=True
        ):
            size = _size(shape)
            start = offsets[trainable]
            chunk = sources[trainable][start : start + size].reshape(shape)
            out[key] = chunk.to(dtype) if dtype.is_floating_point else chunk.round().to(dtype)
            offsets[trainable] = start + size
        return out


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


def _gather(
    state: Mapping[str, Tensor | np.ndarray],
    trainable: tuple[bool, ...],
    which: bool,
    dim: int,
    dtype: torch.dtype,
    out: Tensor | None,
) -> Tensor:
    """Concatenate the entries of ``state`` whose ``trainable`` flag is ``which``."""
    if out is None:
        out = torch.empty(dim, dtype=dtype)
    elif out.shape != (dim,) or out.dtype != dtype:
        raise ValueError(f"out must be {dtype} of shape ({dim},), got {out.dtype} {out.shape}")
    offset = 0
    # numpy's copy: torch's copy_ of many ~100k-element pieces runs 10x slower on a busy
    # 2-core machine (its thread pool contends with the clients' processes).
    target = out.numpy() if out.device.type == "cpu" else None
    for value, flag in zip(state.values(), trainable, strict=True):
        if flag != which:
            continue
        size = _size(tuple(value.shape))
        if isinstance(value, np.ndarray):
            if target is not None:
                np.copyto(target[offset : offset + size], value.reshape(-1))
            else:
                out[offset : offset + size].copy_(torch.from_numpy(value.reshape(-1).copy()))
        elif target is not None and value.device.type == "cpu" and value.dtype != torch.bfloat16:
            np.copyto(target[offset : offset + size], value.detach().reshape(-1).numpy())
        else:
            out[offset : offset + size].copy_(value.detach().reshape(-1))
        offset += size
    return out


def _real(value: Tensor | np.ndarray) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fiu"
    return value.dtype != torch.bool and not value.is_complex()
