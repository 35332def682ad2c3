"""Tests for fedbackdoor.data.partition and the conf/partition configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from fedbackdoor.data.partition import partition_indices, reassign_to_attackers
from fedbackdoor.data.synthetic import synthetic

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def balanced_labels(num_samples: int, num_classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(num_samples) % num_classes)


def assert_disjoint_cover(parts: list[np.ndarray], num_samples: int) -> None:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(num_samples))


def dirichlet(alpha: float, *, num_partitions: int = 10, seed: int = 0) -> DirichletPartitioner:
    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=0,
        self_balancing=False,
        seed=seed,
    )


def mean_max_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    shares = [np.bincount(labels[p]).max() / len(p) for p in parts if len(p) > 0]
    return float(np.mean(shares))


# --------------------------------------------------------------------------------------------
# IID


def test_iid_partitions_are_disjoint_cover_everything_and_balanced() -> None:
    labels = balanced_labels(103, 4)

    parts = partition_indices(labels, IidPartitioner(num_partitions=5))

    assert len(parts) == 5
    assert_disjoint_cover(parts, 103)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_partitions_are_random_but_reproducible() -> None:
    labels = balanced_labels(200, 4)

    first = partition_indices(labels, IidPartitioner(num_partitions=4), seed=7)
    again = partition_indices(labels, IidPartitioner(num_partitions=4), seed=7)
    other = partition_indices(labels, IidPartitioner(num_partitions=4), seed=8)

    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    # Not contiguous blocks of the original order.
    assert not np.array_equal(first[0], np.arange(50))


def test_partitioner_instance_is_not_consumed() -> None:
    labels = balanced_labels(60, 3)
    partitioner = dirichlet(0.5, num_partitions=3)

    first = partition_indices(labels, partitioner)
    again = partition_indices(labels, partitioner)

    assert not partitioner.is_dataset_assigned()
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_tensor_labels_give_the_same_partitions_as_numpy() -> None:
    labels = balanced_labels(50, 5)

    from_numpy = partition_indices(labels, IidPartitioner(num_partitions=3))
    from_tensor = partition_indices(torch.from_numpy(labels), IidPartitioner(num_partitions=3))

    for a, b in zip(from_numpy, from_tensor, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# Dirichlet


def test_dirichlet_small_alpha_is_more_label_skewed_than_large_alpha() -> None:
    labels = balanced_labels(2000, 10)

    skewed = partition_indices(labels, dirichlet(0.1))
    near_iid = partition_indices(labels, dirichlet(100.0))

    assert_disjoint_cover(skewed, 2000)
    assert_disjoint_cover(near_iid, 2000)
    assert mean_max_class_share(labels, skewed) > 0.5
    assert mean_max_class_share(labels, near_iid) < 0.2


def test_dirichlet_is_reproducible_by_seed() -> None:
    labels = balanced_labels(500, 5)

    first = partition_indices(labels, dirichlet(0.5, seed=1))
    again = partition_indices(labels, dirichlet(0.5, seed=1))
    other = partition_indices(labels, dirichlet(0.5, seed=2))

    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# --------------------------------------------------------------------------------------------
# Bad input


def test_more_partitions_than_samples_is_rejected() -> None:
    with pytest.raises(ValueError, match="5 samples into 6 partitions"):
        partition_indices(balanced_labels(5, 2), IidPartitioner(num_partitions=6))
    with pytest.raises(ValueError, match="5 samples into 6 partitions"):
        partition_indices(balanced_labels(5, 2), dirichlet(1.0, num_partitions=6))


@pytest.mark.parametrize(
    "labels",
    [np.array([], dtype=np.int64), np.zeros((4, 2), dtype=np.int64), np.array([0.0, 1.0])],
    ids=["empty", "2-d", "float"],
)
def test_bad_labels_are_rejected(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="labels"):
        partition_indices(labels, IidPartitioner(num_partitions=1))


def test_partitioner_with_a_dataset_is_rejected() -> None:
    partitioner = IidPartitioner(num_partitions=2)
    partitioner.dataset = Dataset.from_dict({"label": [0, 1, 0, 1]})

    with pytest.raises(ValueError, match="already has a dataset"):
        partition_indices(balanced_labels(10, 2), partitioner)


# --------------------------------------------------------------------------------------------
# conf/partition


def partition_config(path: Path) -> DictConfig:
    return OmegaConf.create({"num_clients": 5, "seed": 0, "partition": OmegaConf.load(path)})


@pytest.mark.parametrize(
    "path", sorted((CONF_DIR / "partition").glob("*.yaml")), ids=lambda p: p.stem
)
def test_partition_configs_instantiate_and_run(path: Path) -> None:
    cfg = partition_config(path)
    labels = synthetic(num_train=200, num_test=10).y_train

    parts = partition_indices(labels, instantiate(cfg.partition.partitioner), seed=cfg.seed)

    assert len(parts) == 5
    assert_disjoint_cover(parts, 200)


def test_dirichlet_config_with_bad_alpha_names_alpha() -> None:
    cfg = partition_config(CONF_DIR / "partition" / "dirichlet.yaml")
    cfg.partition.alpha = 0.0

    with pytest.raises(InstantiationException, match="(?i)alpha"):
        instantiate(cfg.partition.partitioner)


# --------------------------------------------------------------------------------------------
# Samples only the attackers hold (Wang et al. 2020, "Attack of the Tails")


def _mask(num_samples: int, reserved: list[int]) -> np.ndarray:
    return np.isin(np.arange(num_samples), reserved)


def test_reserved_samples_move_from_benign_clients_to_the_attacker() -> None:
    # Prepare: 10 samples, 3 clients, client 1 malicious; samples 2, 5 and 7 reserved.
    parts = [np.array([0, 1, 2, 3]), np.array([4, 5, 6]), np.array([7, 8, 9])]
    before = [p.copy() for p in parts]

    # Execute
    moved = reassign_to_attackers(parts, _mask(10, [2, 5, 7]), [1])

    # Assert: the benign clients lose 2 and 7; the attacker keeps its own 5 and gets 2, 7 after
    # its samples; the inputs are untouched.
    assert [p.tolist() for p in moved] == [[0, 1, 3], [4, 5, 6, 2, 7], [8, 9]]
    assert all(p.dtype == np.int64 for p in moved)
    assert all(np.array_equal(p, q) for p, q in zip(parts, before, strict=True))
    assert all(m is not p for m, p in zip(moved, parts, strict=True))


def test_reserved_samples_are_dealt_round_robin_over_the_sorted_attackers() -> None:
    # Prepare: 12 samples, 4 clients, attackers 2 and 0 (given unsorted); reserved 1, 4, 6, 8,
    # 11. Benign client 1 gives up 4 and 6, benign client 3 gives up 11; the attackers keep
    # their own (1 and 8). Sorted pool 4, 6, 11 -> attacker 0, attacker 2, attacker 0.
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5, 6]), np.array([7, 8, 9]), np.array([10, 11])]

    moved = reassign_to_attackers(parts, _mask(12, [1, 4, 6, 8, 11]), iter([2, 0, 2]))

    assert [p.tolist() for p in moved] == [[0, 1, 2, 4, 11], [3, 5], [7, 8, 9, 6], [10]]


def test_without_attackers_the_reserved_samples_are_only_removed() -> None:
    parts = [np.array([0, 1, 2, 3]), np.array([4, 5, 6]), np.array([7, 8, 9])]

    moved = reassign_to_attackers(parts, _mask(10, [2, 5, 7]), [])

    assert [p.tolist() for p in moved] == [[0, 1, 3], [4, 6], [8, 9]]


def test_a_benign_client_left_without_data_is_named() -> None:
    parts = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]

    with pytest.raises(ValueError, match="client 1 would be left without data"):
        reassign_to_attackers(parts, _mask(6, [2, 3]), [0])


def test_a_tensor_mask_from_the_attack_is_accepted() -> None:
    parts = [np.array([0, 1]), np.array([2, 3])]

    moved = reassign_to_attackers(parts, torch.tensor([False, True, False, False]), {1})

    assert [p.tolist() for p in moved] == [[0], [2, 3, 1]]


@pytest.mark.parametrize(
    ("reserved", "malicious", "message"),
    [
        (np.zeros(4, dtype=bool), [2], "malicious client 2"),
        (np.zeros(4, dtype=bool), [True], "ints"),
        (np.zeros(4), [0], "bool mask"),
        (np.zeros(3, dtype=bool), [0], "outside the reserved mask"),
    ],
)
def test_reassign_rejects_bad_arguments(
    reserved: np.ndarray, malicious: list[object], message: str
) -> None:
    parts = [np.array([0, 1]), np.array([2, 3])]
    with pytest.raises(ValueError, match=message):
        reassign_to_attackers(parts, reserved, malicious)  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(data=st.data(), num_samples=st.integers(1, 40), num_clients=st.integers(1, 6))
def test_reassign_keeps_every_sample_once_and_reserved_ones_with_attackers(
    data: st.DataObject, num_samples: int, num_clients: int
) -> None:
    # Prepare: a random disjoint cover of range(num_samples), a random mask and attacker set
    owner = np.array(
        data.draw(
            st.lists(st.integers(0, num_clients - 1), min_size=num_samples, max_size=num_samples)
        )
    )
    parts = [np.flatnonzero(owner == c) for c in range(num_clients)]
    reserved = np.array(
        data.draw(st.lists(st.booleans(), min_size=num_samples, max_size=num_samples))
    )
    malicious = data.draw(st.sets(st.integers(0, num_clients - 1)))
    benign = [c for c in range(num_clients) if c not in malicious]
    if any(len(parts[c]) and reserved[parts[c]].all() for c in benign):
        with pytest.raises(ValueError, match="would be left without data"):
            reassign_to_attackers(parts, reserved, malicious)
        return

    # Execute
    moved = reassign_to_attackers(parts, reserved, malicious)

    # Assert
    everything = np.sort(np.concatenate(moved))
    held_reserved = everything[reserved[everything]]
    assert np.array_equal(everything[~reserved[everything]], np.flatnonzero(~reserved))  # once
    for c in benign:  # order kept, nothing reserved left
        assert np.array_equal(moved[c], parts[c][~reserved[parts[c]]])
    for c in malicious:  # its own samples first, as they were, then reserved ones only
        assert np.array_equal(moved[c][: len(parts[c])], parts[c])
        assert reserved[moved[c][len(parts[c]) :]].all()
    if malicious:  # every reserved sample once, with an attacker
        assert np.array_equal(held_reserved, np.flatnonzero(reserved))
    else:  # no attacker: all dropped
        assert held_reserved.size == 0
    dealt = [len(moved[c]) - len(parts[c]) for c in sorted(malicious)]
    assert not dealt or max(dealt) - min(dealt) <= 1  # round-robin
