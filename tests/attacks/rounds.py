"""The round the update-attack tests share: four clients of three coordinates, two malicious."""

from __future__ import annotations

import torch


def four_clients() -> tuple[torch.Tensor, torch.Tensor]:
    """Updates ``[4, 3]`` and the malicious mask ``[F, T, F, T]``."""
    updates = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [0.25, 4.0, 2.0], [-1.0, 1.0, 1.0]])
    malicious = torch.tensor([False, True, False, True])
    return updates, malicious
