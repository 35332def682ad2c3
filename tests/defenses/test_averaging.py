"""Tests for fedbackdoor.defenses.averaging (FedAvg)."""

from __future__ import annotations

import torch

from fedbackdoor.defenses.averaging import mean


def test_mean_by_hand() -> None:
    # Prepare
    updates = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    weights = torch.tensor([1.0, 1.0, 2.0])

    # Execute
    result = mean(updates, weights)

    # Assert: (1*1 + 1*3 + 2*5) / 4 = 14/4 = 3.5 ; (1*0 + 1*2 + 2*4) / 4 = 10/4 = 2.5
    torch.testing.assert_close(result.update, torch.tensor([3.5, 2.5]))
    assert result.flagged is None
