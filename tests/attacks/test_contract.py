"""The contract every update attack keeps (fedbackdoor.attacks._contract): only the malicious
rows change, into a new tensor; malformed inputs and bad settings raise up front."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbackdoor.attacks.boost import identity, scale
from fedbackdoor.attacks.byzantine import gaussian, sign_flip
from fedbackdoor.attacks.omniscient import alie, ipm, minmax, minsum
from tests.attacks.rounds import four_clients

# Every attack with settings that make it change the malicious rows.
ATTACKS: list[tuple[Callable[..., torch.Tensor], dict[str, Any]]] = [
    (identity, {}),
    (scale, {"boost": 2.0}),
    (sign_flip, {}),
    (gaussian, {}),
    (alie, {}),
    (alie, {"z": 1.5}),
    (ipm, {}),
    (minmax, {"perturbation": "std"}),
    (minmax, {"perturbation": "unit_vec"}),
    (minmax, {"perturbation": "sign"}),
    (minsum, {"perturbation": "std"}),
    (minsum, {"perturbation": "unit_vec"}),
    (minsum, {"perturbation": "sign"}),
]
ATTACK_IDS = [f"{fn.__name__}-{'-'.join(map(str, kw.values()))}".rstrip("-") for fn, kw in ATTACKS]


@pytest.mark.parametrize(("attack", "options"), ATTACKS, ids=ATTACK_IDS)
def test_attack_changes_only_the_malicious_rows(
    attack: Callable[..., torch.Tensor], options: dict[str, Any]
) -> None:
    # Prepare
    updates, malicious = four_clients()
    before = updates.clone()

    # Execute
    out = attack(updates, malicious, generator=torch.Generator().manual_seed(0), **options)

    # Assert
    assert out.shape == updates.shape and out.dtype == updates.dtype
    assert torch.equal(out[~malicious], updates[~malicious])
    assert torch.isfinite(out).all()
    assert torch.equal(updates, before)
    assert out.data_ptr() != updates.data_ptr()
    if attack is not identity:
        assert not torch.equal(out[malicious], updates[malicious])


@pytest.mark.parametrize(("attack", "options"), ATTACKS, ids=ATTACK_IDS)
def test_attack_with_no_malicious_row_returns_an_equal_copy(
    attack: Callable[..., torch.Tensor], options: dict[str, Any]
) -> None:
    updates, _ = four_clients()

    out = attack(updates, torch.zeros(4, dtype=torch.bool), **options)

    assert torch.equal(out, updates)
    assert out.data_ptr() != updates.data_ptr()


@pytest.mark.parametrize(("attack", "options"), ATTACKS, ids=ATTACK_IDS)
@pytest.mark.parametrize(
    ("updates", "malicious", "message"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.bool), r"\[n, d\]"),
        (torch.zeros(4, 3), torch.zeros(3, dtype=torch.bool), "malicious must have shape"),
        (torch.zeros(4, 3), torch.tensor([1, 3]), "bool mask"),
        (torch.zeros(4, 3, dtype=torch.int64), torch.ones(4, dtype=torch.bool), "floating"),
    ],
)
def test_attacks_reject_malformed_inputs(
    attack: Callable[..., torch.Tensor],
    options: dict[str, Any],
    updates: torch.Tensor,
    malicious: torch.Tensor,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        attack(updates, malicious, **options)


@pytest.mark.parametrize(("attack", "options"), ATTACKS, ids=ATTACK_IDS)
@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 7),
    d=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_attack_contract_holds_for_any_shape_and_mask(
    attack: Callable[..., torch.Tensor],
    options: dict[str, Any],
    n: int,
    d: int,
    seed: int,
    data: st.DataObject,
) -> None:
    # Prepare: any mask, including all-benign and all-malicious rounds.
    generator = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=generator, dtype=torch.float64)
    malicious = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))

    # Execute
    out = attack(updates, malicious, generator=generator, **options)

    # Assert
    assert out.shape == (n, d) and torch.isfinite(out).all()
    assert torch.equal(out[~malicious], updates[~malicious])


# --------------------------------------------------------------------------------------------
# Settings are validated up front
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "options", "name"),
    [
        *[(sign_flip, {"scale": v}, "scale") for v in (0.0, -1.0, math.inf, math.nan, "1", True)],
        *[(gaussian, {"std": v}, "std") for v in (0.0, -2.0, math.inf, math.nan, "1", None)],
        *[(alie, {"z": v}, "z") for v in (-0.5, math.inf, math.nan, "1", False)],
        *[(ipm, {"epsilon": v}, "epsilon") for v in (0.0, -0.5, math.inf, math.nan, "0.5")],
        *[
            (attack, options, name)
            for attack in (minmax, minsum)
            for options, name in [
                ({"perturbation": "gauss"}, "perturbation"),
                ({"perturbation": None}, "perturbation"),
                ({"gamma_init": 0.0}, "gamma_init"),
                ({"gamma_init": math.inf}, "gamma_init"),
                ({"gamma_init": "10"}, "gamma_init"),
                ({"tol": 0.0}, "tol"),
                ({"tol": math.nan}, "tol"),
                ({"gamma_init": 1.0, "tol": 1.0}, "tol"),
            ]
        ],
    ],
)
def test_bad_settings_raise_naming_the_setting(
    attack: Callable[..., torch.Tensor], options: dict[str, Any], name: str
) -> None:
    updates, _ = four_clients()

    # Even in a round without attackers: a bad config must fail in round 1, not when first used.
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        attack(updates, torch.zeros(4, dtype=torch.bool), **options)
