"""Config composition (conf/) and validation: every bad value stops with its key named."""

from __future__ import annotations

import os
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
        ("round_timeout=0", "round_timeout=0"),
        ("checkpoint.every=0", "checkpoint.every=0"),
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


# --- what the run needs of this machine, checked before Ray starts -------------------------------


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Make this machine show ``count`` CUDA devices to torch (0: none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_a_cuda_device_without_a_visible_gpu_stops_at_start(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    _gpus(monkeypatch, 0)

    with pytest.raises(ConfigError) as info:
        validate(compose_config([f"device={device}"]))

    assert str(info.value) == (
        f"device='{device}' but no CUDA device is visible on this machine "
        "(torch.cuda.is_available() is False); use device=cpu or auto"
    )
    validate(compose_config(["device=auto"]))  # auto falls back to the CPU
    validate(compose_config(["device=cpu"]))


def test_a_visible_gpu_allows_cuda_up_to_its_count(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1)

    validate(compose_config(["device=cuda"]))
    validate(compose_config(["device=cuda:0"]))
    validate(compose_config(["device=auto"]))
    with pytest.raises(ConfigError) as info:
        validate(compose_config(["device=cuda:1"]))

    assert str(info.value) == (
        "device='cuda:1' but only 1 CUDA device(s) are visible on this machine (cuda:0 to cuda:0)"
    )


@pytest.mark.parametrize("device", ["mps", "gpu", "CPU", "cuda:x", "cuda:", "cuda0"])
def test_a_device_resolve_device_does_not_know_is_refused_naming_it(device: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_config([f"device={device}"]))

    assert str(info.value) == f"device='{device}' must be one of cpu, cuda, cuda:N, auto"


def test_client_cores_beyond_a_local_ray_instance_stop_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)

    validate(compose_config(["backend.client_resources.num_cpus=4"]))
    with pytest.raises(ConfigError) as machine:
        validate(compose_config(["backend.client_resources.num_cpus=100"]))
    with pytest.raises(ConfigError) as given:
        validate(compose_config(["backend.num_cpus=2", "backend.client_resources.num_cpus=3"]))

    assert str(machine.value) == (
        "backend.client_resources.num_cpus=100 is more than the cores of the local Ray "
        "instance (os.cpu_count()=4): no client could ever be scheduled"
    )
    assert str(given.value) == (
        "backend.client_resources.num_cpus=3 is more than the cores of the local Ray "
        "instance (backend.num_cpus=2): no client could ever be scheduled"
    )
    # A joined cluster's cores are not known here: Ray decides.
    validate(compose_config(["backend.address=auto", "backend.client_resources.num_cpus=100"]))


def test_client_gpus_need_cuda_devices_visible_to_a_local_ray_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _gpus(monkeypatch, 0)
    with pytest.raises(ConfigError) as none:
        validate(compose_config(["backend.client_resources.num_gpus=0.25"]))
    validate(compose_config(["backend.address=auto", "backend.client_resources.num_gpus=0.25"]))
    _gpus(monkeypatch, 1)
    validate(compose_config(["backend.client_resources.num_gpus=0.25"]))
    with pytest.raises(ConfigError) as too_many:
        validate(compose_config(["backend.client_resources.num_gpus=2"]))

    assert str(none.value) == (
        "backend.client_resources.num_gpus=0.25 but no CUDA device is visible on this machine "
        "for the local Ray instance: no client could ever be scheduled"
    )
    assert str(too_many.value) == (
        "backend.client_resources.num_gpus=2 but only 1 CUDA device(s) are visible on this "
        "machine: no client could ever be scheduled"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("backend.client_resources.num_cpus=-2", "must be a number > 0"),
        ("backend.client_resources.num_gpus=-1", "must be a number >= 0"),
        ("backend.num_cpus=0", "must be null or an integer >= 1"),
        ("backend.num_cpus=-3", "must be null or an integer >= 1"),
        ("backend.num_cpus=1.5", "must be null or an integer >= 1"),
    ],
)
def test_negative_ray_resources_are_refused_naming_them(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_config([override]))

    assert str(info.value) == f"{override} {message}"


BIG_PATTERN = [[1] * 40] * 40


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (
            "[[2,0],[0,1]]",
            "attack.trigger.pattern=[[2, 0], [0, 1]]: pattern values must be in [0, 1] or "
            "null, got 2",
        ),
        (
            "[[1,0],[0]]",
            "attack.trigger.pattern=[[1, 0], [0]]: pattern must be a non-empty rectangular "
            "grid, got [[1, 0], [0]]",
        ),
        (
            str(BIG_PATTERN).replace(" ", ""),
            f"attack.trigger.pattern={str(BIG_PATTERN)[:76]} ...: pattern of size (40, 40) is "
            "larger than the image (28, 28)",
        ),
    ],
)
def test_a_bad_trigger_pattern_stops_at_start_in_one_short_line(pattern: str, message: str) -> None:
    cfg = compose_config(
        ["attack=badnets", "attack/trigger=pattern", f"attack.trigger.pattern={pattern}"]
    )

    with pytest.raises(ConfigError) as info:
        validate(cfg)

    assert str(info.value) == message


def test_a_given_data_dir_that_does_not_exist_stops_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"

    with pytest.raises(ConfigError) as info:
        validate(compose_config([f"dataset.data_dir={missing}"]))

    assert str(info.value) == (
        f"dataset.data_dir='{missing}' is not a folder on this machine (give the folder "
        "holding the dataset, or null to search the usual places)"
    )
    validate(compose_config([f"dataset.data_dir={tmp_path}"]))  # its files: the loader's part
