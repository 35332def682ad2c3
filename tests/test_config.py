"""Config composition (conf/) and validation: every bad value stops with its key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from fedbackdoor.config import ConfigError, compose_config, validate


def test_default_config_composes_and_is_valid() -> None:
    cfg = compose_config()

    validate(cfg)
    assert cfg.dataset.name == "fashion_mnist"
    assert cfg.attack.fraction == 0.1 and cfg.attack.boost == "auto"  # model replacement
    assert cfg.defense.rule._target_.endswith("averaging.mean")


CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(
    "group_option",
    [
        f"{group}={path.stem}"
        for group in ("dataset", "model", "partition", "attack", "defense", "client_dp", "sanitize")
        for path in sorted((CONF / group).glob("*.yaml"))
    ]
    + [f"posttrain={path.stem}" for path in sorted((CONF / "posttrain").glob("*.yaml"))]
    + ["posttrain=[neural_cleanse,fine_pruning,strip]"]
    + [f"+experiment={path.stem}" for path in sorted((CONF / "experiment").glob("*.yaml"))],
)
def test_every_documented_option_composes_and_validates(group_option: str) -> None:
    cfg = compose_config([group_option])

    validate(cfg)
    OmegaConf.to_yaml(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("attack.fraction=1.5", "attack.fraction=1.5"),
        ("attack.fraction=-0.1", "attack.fraction=-0.1"),
        ("attack.poison_ratio=2", "attack.poison_ratio=2"),
        ("attack.target_label=10", "attack.target_label=10"),
        ("attack.boost=0", "attack.boost=0"),
        ("attack.boost=big", "attack.boost='big'"),
        ("attack=label_flip attack.source_label=12", "attack.source_label=12"),
        ("attack.end_round=0", "attack.end_round=0"),
        ("attack.every=0", "attack.every=0"),
        ("attack.start_round=1.5", "attack.start_round=1.5"),
        ("clients_per_round=30", "clients_per_round=30"),
        ("num_rounds=0", "num_rounds=0"),
        ("batch_size=-4", "batch_size=-4"),
        ("lr=0", "lr=0"),
        ("device=tpu", "device='tpu'"),
        ("backend.client_resources.num_cpus=0", "backend.client_resources.num_cpus=0"),
        ("backend.parallel_runs=0", "backend.parallel_runs=0"),
        ("seed=-1", "seed=-1"),
        ("attack=pgd attack.norm_bound=0", "attack.norm_bound=0"),
        ("attack.trigger=square attack.trigger.size=40", "attack.trigger.size=40"),
        ("attack=label_flip attack.mode=bad", "attack.mode='bad'"),
        ("defense=trimmed_mean defense.beta=0.7", "defense.beta=0.7"),
        ("defense=krum defense.f=-1", "defense.f=-1"),
        ("attack=alie attack.z=-1", "attack.z=-1"),
        ("attack.follows_protocol=true", "attack.boost='auto'"),
        ("attack=badnets attack.follows_protocol=true attack.lr=0.1", "attack.lr=0.1"),
        ("attack=pgd attack.follows_protocol=true attack.boost=1", "attack.update"),
        ("attack.follows_protocol=maybe", "attack.follows_protocol='maybe'"),
        ("client_dp=dpsgd client_dp.max_grad_norm=0", "client_dp.max_grad_norm=0"),
        ("client_dp=dpsgd client_dp.target_epsilon=2", "client_dp.target_epsilon=2"),
        ("client_dp=dpsgd client_dp.noise_multiplier=-1", "client_dp.noise_multiplier=-1"),
        ("client_dp=dpsgd client_dp.delta=1", "client_dp.delta=1"),
        ("client_dp=dpsgd client_dp.accountant=moments", "client_dp.accountant='moments'"),
        ("gradient_analysis=maybe", "gradient_analysis='maybe'"),
        ("posttrain.every=0", "posttrain.every=0"),
        ("posttrain.server_size=0", "posttrain.server_size=0"),
        ("posttrain=strip +posttrain.defenses.strip.bogus=1", "posttrain.defenses.strip.bogus=1"),
        ("sanitize=activation_clustering sanitize.dims=0", "sanitize.dims=0"),
        ("sanitize=isolation_forest sanitize.contamination=0.9", "sanitize.contamination=0.9"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override: str, key: str) -> None:
    cfg = compose_config(override.split())

    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert key in str(info.value)


def test_more_malicious_per_round_than_attackers_or_slots_is_rejected() -> None:
    # 10% of 20 clients = 2 attackers: asking for 3 in every round cannot be met.
    with pytest.raises(ConfigError, match=r"attack.per_round=3 .*malicious clients=2"):
        validate(compose_config(["attack.per_round=3"]))
    with pytest.raises(ConfigError, match=r"attack.per_round=6 .*clients_per_round=5"):
        validate(
            compose_config(["attack.fraction=0.5", "clients_per_round=5", "attack.per_round=6"])
        )
    validate(compose_config(["attack.per_round=2"]))


def test_unknown_group_option_names_the_group() -> None:
    with pytest.raises(ConfigCompositionException, match="defense"):
        compose_config(["defense=nonexistent"])


def test_boost_auto_is_model_replacement_with_the_configured_server_lr() -> None:
    from fedbackdoor.experiment import build_update_attack

    cfg = compose_config(["attack.boost=auto", "clients_per_round=8", "server_lr=0.5"])
    validate(cfg)
    attack = build_update_attack(cfg)
    malicious = torch.tensor([True] + [False] * 7)

    boosted = attack(torch.ones(8, 2), malicious, weights=torch.ones(8), generator=None)

    assert torch.equal(boosted[0], torch.full((2,), 16.0))  # n / eta with one attacker


def test_a_defense_that_can_never_run_stops_at_start_naming_the_keys() -> None:
    cfg = compose_config(["defense=bulyan", "defense.f=3", "clients_per_round=10"])

    with pytest.raises(ConfigError, match=r"clients_per_round=10.*n >= 4f \+ 3"):
        validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack=pgd", "attack.norm_bound=0"], "attack.norm_bound=0"),
        (["attack=pgd", "attack.norm_bound=-1.5"], "attack.norm_bound=-1.5"),
        (["attack=neurotoxin", "attack.mask_ratio=1.5"], "attack.mask_ratio=1.5"),
        (["attack.local_epochs=0"], "attack.local_epochs=0"),
        (["attack.lr=-0.1"], "attack.lr=-0.1"),
        (["defense=fltrust", "defense.root_size=0"], "defense.root_size=0"),
    ],
)
def test_attacker_settings_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(compose_config(overrides))


def test_an_update_given_as_a_string_is_refused_with_the_fix() -> None:
    # Composing in Python without normalize_overrides leaves the name as a string.
    cfg = compose_config()
    cfg.attack["update"] = "pgd"
    with pytest.raises(ConfigError, match="attack.update='pgd' must be an option"):
        validate(cfg)


def test_an_unknown_update_option_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException):
        compose_config(["attack.update=nonexistent"])
