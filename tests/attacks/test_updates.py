"""Tests for fedbackdoor.attacks.updates and the configs in conf/attack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedbackdoor.attacks.poison import backdoor_testset, poison_dataset
from fedbackdoor.attacks.triggers import Trigger
from fedbackdoor.attacks.updates import identity, scale

ATTACK_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "conf" / "attack").glob("*.yaml"))
REQUIRED_KEYS = {
    "fraction",
    "per_round",
    "poison_ratio",
    "target_label",
    "boost",
    "data_poisoning",
    "trigger",
    "update",
}


def _updates() -> tuple[torch.Tensor, torch.Tensor]:
    updates = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [0.25, 4.0, 2.0], [-1.0, 1.0, 1.0]])
    malicious = torch.tensor([False, True, False, True])
    return updates, malicious


def test_scale_multiplies_only_the_malicious_rows() -> None:
    # Prepare
    updates, malicious = _updates()
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
    updates, malicious = _updates()

    out = scale(updates, malicious, boost=1.0, generator=torch.Generator().manual_seed(0))

    assert torch.equal(out, updates)


def test_scale_with_no_malicious_client_changes_nothing() -> None:
    updates, _ = _updates()

    out = scale(updates, torch.zeros(4, dtype=torch.bool), boost=5.0)

    assert torch.equal(out, updates)


@pytest.mark.parametrize("boost", [0.0, -1.0, float("inf"), float("nan"), "2", True])
def test_scale_rejects_bad_boost(boost: float) -> None:
    updates, malicious = _updates()

    with pytest.raises(ValueError, match="boost"):
        scale(updates, malicious, boost=boost)


def test_identity_returns_an_equal_copy() -> None:
    updates, malicious = _updates()

    out = identity(updates, malicious)

    assert torch.equal(out, updates)
    assert out.data_ptr() != updates.data_ptr()


@pytest.mark.parametrize("attack", [identity, scale])
@pytest.mark.parametrize(
    ("updates", "malicious", "message"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.bool), r"\[n, d\]"),
        (torch.zeros(4, 3), torch.zeros(3, dtype=torch.bool), "malicious must have shape"),
        (torch.zeros(4, 3), torch.tensor([1, 3]), "bool mask"),
    ],
)
def test_attacks_reject_malformed_inputs(
    attack: Callable[..., torch.Tensor],
    updates: torch.Tensor,
    malicious: torch.Tensor,
    message: str,
) -> None:
    settings = {"boost": 2.0} if attack is scale else {}

    with pytest.raises(ValueError, match=message):
        attack(updates, malicious, **settings)


def _compose(path: Path) -> DictConfig:
    return OmegaConf.create(
        {
            "seed": 0,
            "num_clients": 10,
            "dataset": {"image_size": [28, 28], "num_classes": 10},
            "attack": OmegaConf.load(path),
        }
    )


def test_attack_configs_are_found() -> None:
    assert {path.stem for path in ATTACK_CONFIGS} >= {"none", "badnets"}


@pytest.mark.parametrize("path", ATTACK_CONFIGS, ids=lambda path: path.stem)
def test_attack_config_composes_instantiates_and_runs(path: Path) -> None:
    # Prepare
    cfg = _compose(path)
    attack = cfg.attack
    generator = torch.Generator().manual_seed(cfg.seed)
    x = torch.rand(6, 1, 28, 28, generator=generator)
    y = torch.arange(6, dtype=torch.int64) % cfg.dataset.num_classes
    updates = torch.randn(4, 5, generator=generator)
    malicious = torch.tensor([True, False, False, True])

    # Execute
    OmegaConf.resolve(cfg)  # every interpolation must point at something the root provides
    trigger = instantiate(attack.trigger)
    # `attack.update` would be DictConfig's own .update method: index the node by key instead.
    update = instantiate(attack["update"])
    stamped = trigger.apply(x)
    attacked = update(updates, malicious, generator=generator)
    x_poisoned, y_poisoned, poisoned = poison_dataset(
        x,
        y,
        trigger=trigger,
        poison_ratio=attack.poison_ratio,
        target_label=attack.target_label,
        generator=generator,
    )
    x_bd, y_bd = backdoor_testset(x, y, trigger=trigger, target_label=attack.target_label)

    # Assert
    assert REQUIRED_KEYS <= set(attack.keys())
    assert isinstance(trigger, Trigger) and trigger.image_size == (28, 28)
    assert stamped.shape == x.shape and not torch.equal(stamped, x)
    assert attacked.shape == updates.shape
    assert torch.equal(attacked[~malicious], updates[~malicious])
    assert int(poisoned.sum()) == round(attack.poison_ratio * 6)
    assert x_poisoned.shape == x.shape and y_poisoned.shape == y.shape
    assert torch.all(y_bd == attack.target_label) and x_bd.shape[0] == y_bd.shape[0]
    assert 0.0 <= attack.fraction <= 1.0
    assert attack.per_round is None or isinstance(attack.per_round, int)
    assert isinstance(attack.data_poisoning, bool)


def test_badnets_update_follows_attack_boost() -> None:
    # Prepare
    cfg = _compose(next(p for p in ATTACK_CONFIGS if p.stem == "badnets"))
    cfg.attack.boost = 3.0
    updates, malicious = _updates()

    # Execute
    out = instantiate(cfg.attack["update"])(updates, malicious)

    # Assert
    assert torch.equal(out[malicious], updates[malicious] * 3.0)
    assert torch.equal(out[~malicious], updates[~malicious])


def test_none_and_badnets_measure_the_same_trigger() -> None:
    # The clean baseline's backdoor accuracy is only comparable if it uses the attack's trigger.
    by_name = {p.stem: _compose(p) for p in ATTACK_CONFIGS}

    none = instantiate(by_name["none"].attack.trigger)
    badnets = instantiate(by_name["badnets"].attack.trigger)

    assert torch.equal(none.mask, badnets.mask) and torch.equal(none.pattern, badnets.pattern)
