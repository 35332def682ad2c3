"""Tests for fedbackdoor.attacks.byzantine: sign flipping and Gaussian noise."""

from __future__ import annotations

import pytest
import torch

from fedbackdoor.attacks.byzantine import gaussian, sign_flip
from tests.attacks.rounds import four_clients


def test_sign_flip_reverses_and_scales_the_malicious_rows() -> None:
    updates, malicious = four_clients()

    out = sign_flip(updates, malicious, scale=2.0)

    # Rows 1 and 3 times -2: [3, 0, -1] -> [-6, 0, 2] and [-1, 1, 1] -> [2, -2, -2].
    expected = torch.tensor(
        [[1.0, -2.0, 0.5], [-6.0, 0.0, 2.0], [0.25, 4.0, 2.0], [2.0, -2.0, -2.0]]
    )
    assert torch.equal(out, expected)


def test_sign_flip_defaults_to_a_plain_negation() -> None:
    updates, malicious = four_clients()

    out = sign_flip(updates, malicious)

    assert torch.equal(out[malicious], -updates[malicious])


def test_gaussian_is_reproducible_from_the_generator_seed() -> None:
    updates, malicious = four_clients()

    first = gaussian(updates, malicious, std=2.0, generator=torch.Generator().manual_seed(7))
    again = gaussian(updates, malicious, std=2.0, generator=torch.Generator().manual_seed(7))
    other = gaussian(updates, malicious, std=2.0, generator=torch.Generator().manual_seed(8))

    assert torch.equal(first, again)
    assert not torch.equal(first[malicious], other[malicious])
    assert not torch.equal(first[1], first[3])  # each malicious row gets its own draw


def test_gaussian_noise_has_the_requested_std() -> None:
    # Prepare: the malicious rows hold a large offset that must not leak into the noise.
    d = 200_000
    updates = torch.full((3, d), 50.0)
    malicious = torch.tensor([True, False, True])

    # Execute
    out = gaussian(updates, malicious, std=3.0, generator=torch.Generator().manual_seed(0))

    # Assert: 400k draws; the sample std's relative error is ~1/sqrt(2 * 400k) ~ 0.1%.
    noise = out[malicious]
    assert noise.std().item() == pytest.approx(3.0, rel=0.01)
    assert abs(noise.mean().item()) < 0.03
    assert torch.equal(out[1], updates[1])
