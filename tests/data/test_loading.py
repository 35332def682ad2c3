"""Tests for fedbackdoor.data.loading and the conf/dataset configs: a dataset is its YAML's
``_target_``, instantiated once per process per resolved node."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from hydra.utils import get_method
from omegaconf import OmegaConf

from fedbackdoor.config import CONF_DIR, compose_config
from fedbackdoor.data import torchvision_sets
from fedbackdoor.data.image_data import ImageData
from fedbackdoor.data.loading import instantiate_dataset
from fedbackdoor.data.synthetic import synthetic
from tests.data.fakes import fake_idx_set

pytestmark = pytest.mark.usefixtures("isolated")

SYNTHETIC = "fedbackdoor.data.synthetic.synthetic"
DATASET_YAMLS = sorted((CONF_DIR / "dataset").glob("*.yaml"))


def test_dataset_yaml_composes_and_instantiates_through_its_target() -> None:
    cfg = compose_config(["dataset=synthetic", "dataset.num_train=40", "seed=3"])

    data = instantiate_dataset(cfg.dataset)

    assert cfg.dataset._target_ == SYNTHETIC
    assert isinstance(data, ImageData)
    assert data.name == cfg.dataset.name == "synthetic"
    assert data.num_classes == cfg.dataset.num_classes
    assert data.channels == cfg.dataset.channels
    assert list(data.image_size) == list(cfg.dataset.image_size)
    assert torch.equal(data.x_train, synthetic(num_train=40, seed=3).x_train)  # seed: ${seed}
    same = compose_config(["seed=3", "dataset.num_train=40", "dataset=synthetic"])
    assert instantiate_dataset(same.dataset) is data  # loaded once per process per config


def test_a_yaml_whose_num_classes_disagrees_with_the_loader_is_refused(tmp_path: Path) -> None:
    fake_idx_set(tmp_path / "MNIST" / "raw", image_size=(28, 28))
    agreeing = compose_config(["dataset=mnist", f"dataset.data_dir={tmp_path}"])
    disagreeing = compose_config(
        ["dataset=mnist", f"dataset.data_dir={tmp_path}", "dataset.num_classes=7"]
    )

    data = instantiate_dataset(agreeing.dataset)  # every fact the YAML states is checked
    with pytest.raises(ValueError, match=r"num_classes=7 does not match the loaded 'mnist'"):
        instantiate_dataset(disagreeing.dataset)

    assert data.num_classes == 10


def test_cached_per_resolved_node_whatever_the_key_order_or_sequence_type() -> None:
    first = instantiate_dataset(
        {"_target_": SYNTHETIC, "image_size": [12, 12], "seed": 0, "num_train": 100}
    )
    again = instantiate_dataset(
        {"_target_": SYNTHETIC, "num_train": 100, "seed": 0, "image_size": (12, 12)}
    )
    other = instantiate_dataset(
        {"_target_": SYNTHETIC, "num_train": 100, "seed": 1, "image_size": (12, 12)}
    )

    assert first is again
    assert other is not first
    assert first.x_train.shape == (100, 1, 12, 12)
    assert torch.equal(first.x_train, synthetic(num_train=100).x_train)


def test_a_dataset_refuses_settings_of_another() -> None:
    with pytest.raises(TypeError, match="seed"):
        instantiate_dataset({"_target_": "fedbackdoor.data.torchvision_sets.mnist", "seed": 0})


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(TypeError, match="colour"):
        instantiate_dataset({"_target_": SYNTHETIC, "colour": "blue"})


def test_unknown_dataset_name_lists_valid_names() -> None:
    with pytest.raises(HydraException, match=r"(?s)cifar10.*fashion_mnist.*mnist.*synthetic"):
        compose_config(["dataset=imagenet"])


def test_a_node_without_target_is_refused() -> None:
    # As configs named a dataset before datasets had a _target_.
    old_style = {"name": "synthetic", "synthetic": {"num_train": 100}}

    with pytest.raises(ValueError, match="_target_"):
        instantiate_dataset(old_style)


def test_a_target_that_returns_no_image_data_is_refused() -> None:
    with pytest.raises(TypeError, match="not ImageData"):
        instantiate_dataset({"_target_": "builtins.dict", "name": "synthetic"})


def test_a_missing_dataset_raises_the_loaders_error_not_hydras(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    cfg = compose_config(["dataset=fashion_mnist", f"dataset.data_dir={tmp_path}"])

    with pytest.raises(FileNotFoundError) as excinfo:
        instantiate_dataset(cfg.dataset)

    # The CLI prints this message as it is: one place tried per line.
    assert str(excinfo.value).startswith(
        "Could not load dataset 'fashion_mnist'. Tried, in order:\n"
    )


@pytest.mark.parametrize("path", DATASET_YAMLS, ids=lambda p: p.stem)
def test_dataset_configs_are_consistent(path: Path) -> None:
    cfg = compose_config([f"dataset={path.stem}"])
    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    assert isinstance(node, dict)
    kwargs = {str(k): v for k, v in node.items() if not str(k).startswith("_")}

    loader = get_method(node["_target_"])
    inspect.signature(loader).bind(**kwargs)  # the loader takes every key of its YAML

    assert node["name"] == path.stem
    assert node.get("data_dir") is None
    # What other configs interpolate (${dataset.num_classes}, ...) is stated, and checked by
    # the loader (tests above); the synthetic set is quick enough to load here.
    assert {"num_classes", "image_size", "channels"} <= set(kwargs)
    if path.stem == "synthetic":
        data = instantiate_dataset(cfg.dataset)
        assert data.num_classes == node["num_classes"]
        assert data.channels == node["channels"]
        assert list(data.image_size) == list(node["image_size"])
