"""One seed in the config derives every random stream of a run.

Each consumer asks for its own ``torch.Generator`` by name (``"sample"``, ``("client", round,
partition)``, ...), so adding a consumer never shifts the draws of another, and no code touches
the global RNG. Model initialisation is the one place that needs torch's global generator (layer
constructors draw from it); :func:`seeded_init` confines that to a forked RNG state.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator

import torch


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed derived from ``seed`` and any hashable-by-repr ``tags`` (stable across runs
    and processes, unlike ``hash()``)."""
    text = repr((int(seed), *tags)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def make_generator(seed: int, *tags: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``seed`` and ``tags``."""
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


# Runs served in parallel (threads of one process) must not interleave their use of a
# global RNG.
_GLOBAL_RNG = threading.RLock()


@contextlib.contextmanager
def seeded_init(seed: int, *tags: object) -> Iterator[None]:
    """Run a block (model construction) with torch's global CPU RNG seeded, then restore it
    (one thread at a time)."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, *tags))
        yield
