"""A client refuses a received run config that names something it must not run."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedbackdoor.config import CONF_DIR, compose_config
from fedbackdoor.safe_config import NODE_CONFIG_KEY, UnsafeConfig, checked_config, targets

CFG = ["dataset=synthetic", "num_clients=4", "clients_per_round=2", "attack=badnets"]


def _yaml(overrides: list[str]) -> str:
    return OmegaConf.to_yaml(compose_config(overrides), resolve=True)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group",
    ["attack", "defense", "dataset", "model", "partition", "client_dp", "sanitize",
     "attack/trigger", "attack/update"],
)  # fmt: skip
def test_every_option_of_ours_passes(group: str) -> None:
    for option in _options(group):
        cfg = checked_config(_yaml([*CFG, f"{group}={option}"]))
        assert all(t.startswith(("fedbackdoor.", "flwr_datasets.")) for t in targets(cfg))


@pytest.mark.parametrize(
    "target",
    ["os.system", "builtins.exec", "subprocess.run", "urllib.request.urlopen",
     "torch.hub.load", "torch.load", "pandas.read_pickle", "fedbackdoor.cli.main"],
)  # fmt: skip
def test_a_target_outside_the_allow_list_is_refused_naming_it(target: str) -> None:
    cfg = compose_config(CFG)
    cfg.attack.poison._target_ = target
    text = OmegaConf.to_yaml(cfg, resolve=True)

    with pytest.raises(UnsafeConfig, match=rf"attack.poison._target_='{target}' is not an allowed"):
        checked_config(text)


def test_an_interpolation_in_a_received_config_is_refused() -> None:
    text = _yaml(CFG).replace("name: synthetic", "name: ${oc.env:HOME}", 1)

    with pytest.raises(UnsafeConfig, match=r"dataset.name='\$\{oc.env:HOME\}': interpolations"):
        checked_config(text)


def test_a_node_adds_its_own_prefixes_and_the_message_cannot() -> None:
    cfg = compose_config(CFG)
    cfg.attack.poison._target_ = "mylab.poisons.custom"
    text = OmegaConf.to_yaml(cfg, resolve=True)

    assert checked_config(text, {NODE_CONFIG_KEY: "mylab.poisons., other."}) is not None
    with pytest.raises(UnsafeConfig):
        checked_config(text, {"partition-id": 0})  # nothing added by this node
