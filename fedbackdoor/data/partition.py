"""Split a training set over clients with Flower Datasets' partitioners.

The partitioners (``flwr_datasets.partitioner``: IID, Dirichlet label skew after Hsu et al. 2019,
"Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification",
shards, ...) work on Hugging Face datasets. Here they see only a two-column table, ``label`` and
``index``, so they decide which client gets which sample while the images stay in one tensor in
memory; each client's share comes back as an array of indices into that tensor.
"""

from __future__ import annotations

import copy

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner
from torch import Tensor

__all__ = ["partition_indices"]


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
