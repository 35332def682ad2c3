"""Every option of conf/attack and conf/attack/update composes with the run config, validates,
instantiates and runs on small tensors; attack.update=<name> composes a data attack with an
update attack; attack.boost scales any malicious update."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from fedbackdoor.attacks.constraints import LocalConstraint
from fedbackdoor.attacks.triggers import Trigger
from fedbackdoor.config import compose_config, compose_run, normalize_overrides, validate
from fedbackdoor.data.partition import reassign_to_attackers
from fedbackdoor.experiment import build_local_attack, build_update_attack

CONF = Path(__file__).resolve().parents[2] / "conf" / "attack"
ATTACKS = sorted(p.stem for p in CONF.glob("*.yaml"))
UPDATES = sorted(p.stem for p in (CONF / "update").glob("*.yaml"))
TRIGGERS = sorted(p.stem for p in (CONF / "trigger").glob("*.yaml"))
UNTARGETED = ("sign_flip", "gaussian", "alie", "ipm", "minmax", "minsum")
REQUIRED_KEYS = {
    "fraction",
    "per_round",
    "poison_ratio",
    "target_label",
    "boost",
    "start_round",
    "end_round",
    "every",
    "local_epochs",
    "lr",
    "trigger",
    "poison",
    "backdoor_test",
    "backdoor_parts",
    "update",
    "source_label",
    "reserve",
}
BASE = [
    "dataset=synthetic",
    "dataset.image_size=[28,28]",
    "dataset.num_classes=10",
]


def _compose(*overrides: str):  # type: ignore[no-untyped-def]
    return compose_config([*BASE, *overrides])


def test_the_issue_names_are_all_options() -> None:
    names = {"badnets", "blend", "dba", "label_flip", "edge_case", "scaling", "pgd"}
    names |= {"neurotoxin", *UNTARGETED}
    assert names <= set(ATTACKS)
    assert {"none", "scaling", "pgd", "neurotoxin", *UNTARGETED} <= set(UPDATES)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_option_composes_validates_instantiates_and_runs(name: str) -> None:
    # Prepare
    cfg = _compose(f"attack={name}")
    attack = cfg.attack
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=g)
    y = torch.arange(6, dtype=torch.int64) % cfg.dataset.num_classes  # 7 (edge cases) absent
    stacked = torch.randn(4, 5, generator=g)
    malicious = torch.tensor([True, False, False, True])

    # Execute
    validate(cfg)
    OmegaConf.resolve(cfg)  # every interpolation must point at something the root provides
    trigger = instantiate(attack.trigger)
    attacked = build_update_attack(cfg)(stacked, malicious, weights=torch.ones(4), generator=g)
    x_bd, y_bd = instantiate(attack.backdoor_test)(x, y)

    # Assert
    assert REQUIRED_KEYS <= set(attack.keys())
    assert isinstance(trigger, Trigger) and trigger.image_size == (28, 28)
    assert attacked.shape == stacked.shape
    assert torch.equal(attacked[~malicious], stacked[~malicious])
    assert torch.all(y_bd == attack.target_label) and x_bd.shape[0] == y_bd.shape[0]
    if attack.poison is not None:
        x_p, y_p, poisoned = instantiate(attack.poison)(
            x, y, generator=g, attacker_index=1, num_attackers=2
        )
        changed = (y_p != y) | (x_p != x).flatten(1).any(1)
        assert not changed[~poisoned].any()  # only the chosen samples change
    if attack.backdoor_parts is not None:
        parts = instantiate(attack.backdoor_parts)(x, y)
        assert len(parts) == attack.num_parts
    if attack.reserve is not None:
        reserved = instantiate(attack.reserve)(x, y)
        assert reserved.dtype == torch.bool and reserved.shape == (6,)


@pytest.mark.parametrize("update", UPDATES)
def test_every_update_option_composes_with_a_data_attack(update: str) -> None:
    # Prepare: the issue's example, attack=badnets attack.update=<name>
    cfg = compose_config(normalize_overrides([*BASE, "attack=badnets", f"attack.update={update}"]))
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 4))
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 4

    # Execute
    validate(cfg)
    factory = build_local_attack(cfg)
    constraint = None if factory is None else factory(model, x, y)
    attack = build_update_attack(cfg)

    # Assert: BadNets' data poisoning stays, the update option is the chosen one
    assert cfg.attack.poison._target_.endswith("poison_dataset")
    assert (constraint is not None) == (update in ("pgd", "neurotoxin"))
    assert constraint is None or isinstance(constraint, LocalConstraint)
    assert callable(attack)


def test_attack_update_with_a_dot_selects_the_group_option() -> None:
    # Hydra alone would store the string "pgd" in place of the option's node.
    assert normalize_overrides(["attack.update=pgd"]) == ["attack/update=pgd"]
    assert normalize_overrides(["attack.update=pgd,scaling"]) == ["attack/update=pgd,scaling"]
    assert normalize_overrides(["attack.update.apply=null"]) == ["attack.update.apply=null"]
    assert normalize_overrides(["attack.updates=x", "seed=1"]) == ["attack.updates=x", "seed=1"]
    cfg, meta = compose_run([*BASE, "attack=badnets", "attack.update=pgd"])
    assert meta["choices"]["attack/update"] == "pgd"  # type: ignore[index]
    assert cfg.attack["update"]["train"]._target_.endswith("constraints.pgd")


def test_named_update_attacks_equal_their_composition() -> None:
    for name in ("scaling", "pgd", "neurotoxin"):
        named = _compose(f"attack={name}")
        composed = _compose("attack=badnets", f"attack/update={name}")
        assert OmegaConf.to_container(named.attack) == OmegaConf.to_container(composed.attack)


def test_boost_scales_any_malicious_update() -> None:
    # Prepare: ALIE, then x2
    cfg = _compose("attack=alie", "attack.boost=2", "attack.z=1.0")
    stacked = torch.tensor([[1.0, 2.0], [3.0, 2.0], [9.0, 9.0]])
    malicious = torch.tensor([False, False, True])

    # Execute
    out = build_update_attack(cfg)(stacked, malicious)

    # Assert: benign mean (2, 2), std (1, 0): ALIE gives (2 - 1, 2 - 0) = (1, 2); x2 = (2, 4)
    assert torch.allclose(out[2], torch.tensor([2.0, 4.0]))
    assert torch.equal(out[:2], stacked[:2])


def test_scaling_defaults_to_model_replacement() -> None:
    # boost auto: one attacker among 5 equally weighted clients, eta 0.5 -> 5 / 0.5 = 10
    cfg = _compose("attack=scaling", "clients_per_round=5", "server_lr=0.5")
    malicious = torch.tensor([False, True, False, False, False])

    boosted = build_update_attack(cfg)(torch.ones(5, 2), malicious, weights=torch.ones(5))

    assert torch.equal(boosted[1], torch.full((2,), 10.0))
    assert torch.equal(boosted[~malicious], torch.ones(4, 2))


def test_no_boost_no_scaling_step() -> None:
    cfg = _compose("attack=badnets", "attack.boost=1")
    updates = torch.randn(3, 2)

    same = build_update_attack(cfg)(updates, torch.tensor([True, False, False]))

    assert torch.equal(same, updates)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("sign_flip", "scale", 4.0),
        ("gaussian", "std", 0.5),
        ("alie", "z", 1.5),
        ("ipm", "epsilon", 10.0),
        ("minmax", "perturbation", "sign"),
        ("minmax", "gamma_init", 5.0),
        ("minsum", "tol", 1e-3),
    ],
)
def test_attack_settings_at_top_level_reach_the_update(name: str, key: str, value: object) -> None:
    cfg = _compose(f"attack={name}", f"attack.{key}={value}")
    apply = instantiate(cfg.attack["update"]["apply"])
    assert isinstance(apply, functools.partial)
    assert apply.keywords[key] == value


@pytest.mark.parametrize(("name", "key", "value"), [("pgd", "norm_bound", 0.5)])
def test_training_attack_settings_reach_the_constraint(name: str, key: str, value: float) -> None:
    cfg = _compose(f"attack={name}", f"attack.{key}={value}")
    factory = build_local_attack(cfg)
    assert isinstance(factory, functools.partial) and factory.keywords[key] == value


@pytest.mark.parametrize("name", UNTARGETED)
def test_untargeted_attacks_keep_the_backdoor_measurement(name: str) -> None:
    attack = _compose(f"attack={name}").attack
    reference = instantiate(_compose("attack=none").attack.trigger)
    trigger = instantiate(attack.trigger)
    # Malicious clients train honestly; only the server-side step attacks.
    assert attack.poison_ratio == 0.0 and attack.poison is None and attack.boost == 1.0
    family = "byzantine" if name in ("sign_flip", "gaussian") else "omniscient"
    assert attack["update"]["apply"]._target_ == f"fedbackdoor.attacks.{family}.{name}"
    assert torch.equal(trigger.mask, reference.mask)
    assert torch.equal(trigger.pattern, reference.pattern)


def test_the_trigger_options_include_the_documented_ones() -> None:
    assert {"checkerboard", "square", "pattern", "plus", "blend"} <= set(TRIGGERS)


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_every_trigger_option_composes_with_badnets(trigger: str) -> None:
    cfg = compose_config(
        normalize_overrides([*BASE, "attack=badnets", f"attack.trigger={trigger}"])
    )
    x = torch.full((2, 1, 28, 28), 0.5)

    built = instantiate(cfg.attack.trigger)
    poisoned, _, flags = instantiate(cfg.attack.poison)(
        x, torch.tensor([1, 2]), generator=torch.Generator(), attacker_index=0, num_attackers=1
    )

    assert isinstance(built, Trigger) and built.image_size == (28, 28)
    assert flags.sum() == 1 and torch.equal(poisoned[flags], built.apply(x[flags]))


def test_a_user_pattern_from_the_command_line() -> None:
    cfg = _compose("attack=badnets", "attack/trigger=pattern", "attack.trigger.pattern=[[1,null]]")
    built = instantiate(cfg.attack.trigger)
    assert int(built.mask.sum()) == 1


def test_the_plus_trigger_is_the_robust_learning_rate_papers() -> None:
    # Ozdayi et al. 2021, their code on Fashion-MNIST: x[i, 5] = 255 for i in 5..9 and
    # x[7, j] = 255 for j in 3..7; white (1.0 here) on 9 pixels, the rest untouched.
    cfg = _compose("attack=badnets", "attack/trigger=plus")
    expected = torch.zeros(28, 28)
    expected[5:10, 5] = 1.0
    expected[7, 3:8] = 1.0

    trigger = instantiate(cfg.attack.trigger)

    assert torch.equal(trigger.mask, expected)
    assert torch.equal(trigger.pattern, expected.unsqueeze(0))
    assert int(trigger.mask.sum()) == 9


def test_badnets_with_a_source_label_poisons_and_tests_that_class_only() -> None:
    # Prepare: the robust-learning-rate setting, class 1 -> 7 with the plus trigger
    cfg = _compose(
        "attack=badnets",
        "attack/trigger=plus",
        "attack.source_label=1",
        "attack.target_label=7",
        "attack.poison_ratio=1.0",
    )
    x = torch.full((6, 1, 28, 28), 0.5)
    y = torch.tensor([1, 2, 7, 1, 0, 1])
    trigger = instantiate(cfg.attack.trigger)

    # Execute
    validate(cfg)
    x_p, y_p, poisoned = instantiate(cfg.attack.poison)(
        x, y, generator=torch.Generator(), attacker_index=0, num_attackers=1
    )
    x_bd, y_bd = instantiate(cfg.attack.backdoor_test)(x, y)

    # Assert
    assert poisoned.tolist() == [True, False, False, True, False, True]
    assert y_p.tolist() == [7, 2, 7, 7, 0, 7]
    assert torch.equal(x_p[poisoned], trigger.apply(x[poisoned]))
    assert torch.equal(x_bd, trigger.apply(x[[0, 3, 5]])) and y_bd.tolist() == [7, 7, 7]


@pytest.mark.parametrize("name", ["badnets", "blend", "dba", "none", "alie"])
def test_trigger_attacks_default_to_every_non_target_class(name: str) -> None:
    cfg = _compose(f"attack={name}")
    y = torch.tensor([0, 1, 2, 3])

    _, y_bd = instantiate(cfg.attack.backdoor_test)(torch.rand(4, 1, 28, 28), y)

    assert cfg.attack.source_label is None and len(y_bd) == 3


def test_dba_with_a_source_label_poisons_and_tests_that_class_only() -> None:
    cfg = _compose("attack=dba", "attack.source_label=2", "attack.poison_ratio=1.0")
    x, y = torch.full((4, 1, 28, 28), 0.5), torch.tensor([1, 2, 3, 2])

    _, _, poisoned = instantiate(cfg.attack.poison)(
        x, y, generator=torch.Generator(), attacker_index=0, num_attackers=4
    )
    parts = instantiate(cfg.attack.backdoor_parts)(x, y)

    assert poisoned.tolist() == [False, True, False, True]
    assert all(len(y_bd) == 2 for _, y_bd in parts)


@pytest.mark.parametrize(
    ("mode", "kept"),
    [("all_to_one", [1, 2, 3, 4]), ("source_to_target", [1, 3]), ("random", [1, 2, 3, 4])],
)
def test_label_flip_backdoor_test_follows_the_mode(mode: str, kept: list[int]) -> None:
    # y = [0, 1, 2, 1, 3]: target 0 (the default), source 1 (label_flip's default)
    cfg = _compose("attack=label_flip", f"attack.mode={mode}")
    x = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 1, 3])

    x_bd, y_bd = instantiate(cfg.attack.backdoor_test)(x, y)

    assert x_bd[:, 0, 0, 0].tolist() == kept and torch.all(y_bd == 0)


def test_edge_case_reserve_gives_the_training_tail_to_the_attackers() -> None:
    # Prepare: sneakers (7) of brightness 0.1 / 0.5 / 0.9 and a bright shirt (6); the tail is
    # the sneakers at least 0.25 bright: samples 1 and 2.
    cfg = _compose("attack=edge_case")
    x = torch.tensor([0.1, 0.5, 0.9, 0.9]).view(4, 1, 1, 1).expand(4, 1, 28, 28)
    y = torch.tensor([7, 7, 7, 6])
    partitions = [np.array([0, 1]), np.array([2, 3]), np.array([], dtype=np.int64)]

    # Execute
    reserved = instantiate(cfg.attack.reserve)(x, y)
    moved = reassign_to_attackers(partitions, reserved, [2])

    # Assert
    assert reserved.tolist() == [False, True, True, False]
    assert [p.tolist() for p in moved] == [[0], [3], [1, 2]]


def test_base_attacks_reserve_nothing() -> None:
    assert _compose("attack=badnets").attack.reserve is None
