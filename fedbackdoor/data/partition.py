"""Split a training set over clients with Flower Datasets' partitioners.

The partitioners (``flwr_datasets.partitioner``: IID, Dirichlet label skew after Hsu et al. 2019,
"Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification",
shards, ...) work on Hugging Face datasets. Here they see only a two-column table, ``label`` and
``index``, so they decide which client gets which sample while the images stay in one tensor in
memory; each client's share comes back as an array of indices into that tensor.

:func:`reassign_to_attackers` then gives samples only attackers may hold (the edge cases of
Wang et al. 2020, "Attack of the Tails: Yes, You Really Can Backdoor Federated Learning",
NeurIPS 2020) to the malicious clients.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Sequence

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner
from torch import Tensor

__all__ = ["partition_indices", "reassign_to_attackers"]


def partition_indices(
    labels: np.ndarray | Tensor, partitioner: Partitioner, *, seed: int = 0
) -> list[np.ndarray]:
    """Indices of the samples each partition (client) gets.

    The rows are handed to the partitioner in an order shuffled by ``seed``: partitioners that
    cut the table into contiguous blocks (``IidPartitioner`` takes ``Dataset.shard(...,
    contiguous=True)``, without shuffling) then give random yet reproducible partitions.
    Partitioners with their own randomness (``DirichletPartitioner``) also use their own
    ``seed``.

    Parameters
    ----------
    labels : np.ndarray or Tensor
        Integer class labels of the training set, shape ``[N]``; exposed to the partitioner as
        the column ``label`` (use ``partition_by="label"``).
    partitioner : flwr_datasets.partitioner.Partitioner
        A partitioner without a dataset yet, e.g. ``IidPartitioner(num_partitions=10)`` or
        ``DirichletPartitioner(num_partitions=10, partition_by="label", alpha=0.5, seed=0)``.
        It is copied, not consumed: the same instance can be used again and gives the same
        partitions.
    seed : int
        Seed of the ``numpy.random.Generator`` that shuffles the row order.

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` array of indices into ``labels`` per partition, in partition order.

    Raises
    ------
    ValueError
        If ``labels`` is not a non-empty 1-D integer array, if the partitioner already holds a
        dataset, or if it asks for more partitions than there are samples.
    """
    label_array = _as_label_array(labels)
    if partitioner.is_dataset_assigned():
        raise ValueError(
            "partitioner already has a dataset assigned; pass a freshly constructed partitioner"
        )
    # Declared count, read before the partitioner sees the data: flwr-datasets' IidPartitioner
    # would otherwise silently return empty shards.
    declared = getattr(partitioner, "_num_partitions", None)
    if isinstance(declared, int):
        _check_num_partitions(declared, len(label_array))

    partitioner = copy.deepcopy(partitioner)  # a partitioner takes a dataset only once
    order = np.random.default_rng(seed).permutation(len(label_array))
    partitioner.dataset = Dataset.from_dict({"label": label_array[order], "index": order})
    num_partitions = partitioner.num_partitions
    _check_num_partitions(num_partitions, len(label_array))
    return [_index_column(partitioner.load_partition(pid)) for pid in range(num_partitions)]


def _index_column(partition: Dataset) -> np.ndarray:
    """The partition's ``index`` column, sorted. ``[:]`` materialises it in one Arrow call (a
    bare ``Column`` would be converted element by element)."""
    return np.sort(np.asarray(partition.with_format("numpy")["index"][:], dtype=np.int64))


def _as_label_array(labels: np.ndarray | Tensor) -> np.ndarray:
    """``labels`` as a 1-D ``int64`` numpy array, validated."""
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_num_partitions(num_partitions: int, num_samples: int) -> None:
    if num_partitions > num_samples:
        raise ValueError(
            f"Cannot split {num_samples} samples into {num_partitions} partitions: "
            f"num_partitions (num_clients) must be at most the number of samples"
        )


def reassign_to_attackers(
    partitions: Sequence[np.ndarray],
    reserved: np.ndarray | Tensor,
    malicious: Iterable[int],
) -> list[np.ndarray]:
    """Move the reserved samples out of the benign clients' partitions into the attackers'.

    In the edge-case attack of Wang et al. 2020 the edge-case examples come from the tail of
    the distribution and are held by the attacker only: benign clients do not hold them under
    their true label. Partitioners deal them out like any other sample, so this takes every
    reserved index out of every benign partition and deals those indices, in ascending order,
    round-robin over the malicious clients in ascending id order: the ``k``-th smallest goes to
    the ``(k mod m)``-th attacker (``m`` attackers). Reserved samples an attacker already holds
    stay with it. With no malicious client the reserved samples are only removed, so a clean
    baseline (``attack.fraction=0``) trains on the same benign data as the attacked run.

    Parameters
    ----------
    partitions : sequence of np.ndarray
        One 1-D integer array of training-set indices per client (:func:`partition_indices`).
        Not modified.
    reserved : np.ndarray or Tensor
        ``[N]`` bool mask over the training set; ``True`` marks a sample only attackers may
        hold (e.g. :func:`fedbackdoor.attacks.poison.edge_case_mask` of the training set).
    malicious : iterable of int
        Ids (positions in ``partitions``) of the malicious clients; order and repeats do not
        matter.

    Returns
    -------
    list of np.ndarray
        New ``int64`` arrays, one per client. A benign client's is its partition without the
        reserved indices; an attacker's is its partition followed by the indices dealt to it.
        Nothing else is reordered, so sorted partitions stay sorted for benign clients.

    Raises
    ------
    ValueError
        If ``reserved`` is not a 1-D bool mask, a partition holds an index outside it, a
        malicious id is not a client, or a benign client would be left with no sample (the
        message names it).

    Examples
    --------
    >>> parts = [np.array([0, 1, 2, 3]), np.array([4, 5, 6]), np.array([7, 8, 9])]
    >>> reserved = np.isin(np.arange(10), [2, 5, 7])
    >>> [p.tolist() for p in reassign_to_attackers(parts, reserved, [1])]
    [[0, 1, 3], [4, 5, 6, 2, 7], [8, 9]]
    """
    mask = reserved.detach().cpu().numpy() if isinstance(reserved, Tensor) else np.asarray(reserved)
    if mask.ndim != 1 or mask.dtype != np.bool_:
        raise ValueError(
            f"reserved must be a 1-D bool mask over the training set, got dtype {mask.dtype} "
            f"and shape {mask.shape}"
        )
    arrays = [np.asarray(part) for part in partitions]
    attackers = sorted({_client_id(m, len(arrays)) for m in malicious})
    for client, part in enumerate(arrays):
        if part.ndim != 1 or not (part.size == 0 or np.issubdtype(part.dtype, np.integer)):
            raise ValueError(f"partition {client} must be a 1-D integer array, got {part!r}")
        if part.size and (part.min() < 0 or part.max() >= len(mask)):
            raise ValueError(
                f"partition {client} holds indices outside the reserved mask of {len(mask)} samples"
            )

    result = [part.astype(np.int64) for part in arrays]  # copies
    attacker_ids = set(attackers)
    taken: list[np.ndarray] = []
    for client, part in enumerate(result):
        if client in attacker_ids:
            continue
        hit = mask[part]
        if part.size and hit.all():
            raise ValueError(
                f"client {client} would be left without data: all {part.size} of its samples "
                f"are reserved for the attackers"
            )
        taken.append(part[hit])
        result[client] = part[~hit]
    pool = np.sort(np.concatenate(taken)) if taken else np.empty(0, dtype=np.int64)
    for rank, client in enumerate(attackers):
        result[client] = np.concatenate([result[client], pool[rank :: len(attackers)]])
    return result


def _client_id(value: object, num_clients: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"malicious client ids must be ints, got {value!r}")
    try:
        client = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"malicious client ids must be ints, got {value!r}") from None
    if not 0 <= client < num_clients:
        raise ValueError(f"malicious client {client} is not one of the {num_clients} partitions")
    return client
