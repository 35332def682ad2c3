"""Tests for fedbackdoor.attacks.boost: the fixed boost and the identity."""

from __future__ import annotations

import pytest
import torch

from fedbackdoor.attacks.boost import identity, scale
from tests.attacks.rounds import four_clients


def test_scale_multiplies_only_the_malicious_rows() -> None:
    # Prepare
    updates, malicious = four_clients()
    before = updates.clone()

    # Execute
    out = scale(updates, malicious, boost=10.0)

    # Assert
    expected = torch.tensor(
        [[1.0, -2.0, 0.5], [30.0, 0.0, -10.0], [0.25, 4.0, 2.0], [-10.0, 10.0, 10.0]]
    )
    assert torch.equal(out, expected)
    assert torch.equal(updates, before)
    assert out.data_ptr() != updates.data_ptr()


def test_scale_by_one_is_the_identity() -> None:
    updates, malicious = four_clients()

    out = scale(updates, malicious, boost=1.0, generator=torch.Generator().manual_seed(0))

    assert torch.equal(out, updates)


def test_scale_with_no_malicious_client_changes_nothing() -> None:
    updates, _ = four_clients()

    out = scale(updates, torch.zeros(4, dtype=torch.bool), boost=5.0)

    assert torch.equal(out, updates)


@pytest.mark.parametrize("boost", [0.0, -1.0, float("inf"), float("nan"), "2", True])
def test_scale_rejects_bad_boost(boost: float) -> None:
    updates, malicious = four_clients()

    with pytest.raises(ValueError, match="boost"):
        scale(updates, malicious, boost=boost)


def test_identity_returns_an_equal_copy() -> None:
    updates, malicious = four_clients()

    out = identity(updates, malicious)

    assert torch.equal(out, updates)
    assert out.data_ptr() != updates.data_ptr()
