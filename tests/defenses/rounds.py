"""Inputs the defense tests share: rounds of random updates, seeded generators, a reference."""

from __future__ import annotations

import torch
from torch import Tensor


def random_updates(seed: int, n: int, d: int) -> tuple[Tensor, Tensor]:
    """``n`` standard normal updates of ``d`` coordinates and their sample counts in [1, 100)."""
    generator = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=generator)
    weights = torch.randint(1, 100, (n,), generator=generator).to(torch.float32)
    return updates, weights


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def f64(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def reference_for(updates: Tensor) -> Tensor:
    """A server update loosely aligned with the clients', for FLTrust's shared tests."""
    return updates.mean(dim=0) + 0.1 * torch.randn(updates.shape[1], generator=seeded(99))
