"""From a config's ``dataset`` node to its :class:`~fedbackdoor.data.image_data.ImageData`, once
per process.

The node is ``conf/dataset/<name>.yaml``: its ``_target_`` is the dataset's loader (e.g.
:func:`fedbackdoor.data.torchvision_sets.fashion_mnist`,
:func:`fedbackdoor.data.synthetic.synthetic`) and its other keys are the loader's arguments,
including the facts other settings interpolate (``num_classes``, ``image_size``,
``channels``), which the loader checks against what it loads.
Adding a dataset is its loader function and its YAML; nothing here names one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedbackdoor.data import torchvision_sets
from fedbackdoor.data.image_data import ImageData

__all__ = ["clear_cache", "instantiate_dataset"]


def instantiate_dataset(node: DictConfig | Mapping[str, Any]) -> ImageData:
    """The dataset ``node`` describes: its ``_target_`` called with its other keys.

    Cached per process on the resolved node, so the server and every Ray actor load a dataset
    once per config, and runs that agree on the node share one :class:`ImageData` (never modify
    its tensors in place).

    Parameters
    ----------
    node : DictConfig or mapping
        A ``dataset`` node (``cfg.dataset``); its interpolations (``seed: ${seed}``) are
        resolved against its config.

    Returns
    -------
    ImageData
        The same object for the same resolved node within a process.

    Raises
    ------
    ValueError
        If the node has no ``_target_``, or the loader refuses its arguments (e.g. a stated
        ``num_classes`` that disagrees with the data, named in the message).
    FileNotFoundError
        If the loader found the dataset nowhere (the message lists the places tried).
    TypeError
        If the node has a key the loader does not take, or the loader returns no ImageData.
    """
    if isinstance(node, DictConfig):
        resolved = OmegaConf.to_container(node, resolve=True)
    else:
        resolved = dict(node)
    if not isinstance(resolved, dict) or "_target_" not in resolved:
        raise ValueError(
            "the dataset node needs a _target_ (its loader, see conf/dataset/*.yaml); "
            f"got keys {sorted(resolved) if isinstance(resolved, dict) else resolved!r}"
        )
    # Keys sorted: the same settings in another order are the same dataset.
    return _instantiate_cached(json.dumps(resolved, sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _instantiate_cached(node_json: str) -> ImageData:
    node = json.loads(node_json)
    try:
        data = instantiate(node, _convert_="all")
    except InstantiationException as err:
        # Hydra wraps the loader's own error in a one-line repr; raise that error itself, so a
        # missing dataset keeps its list of places tried (the CLI prints it as it is).
        if not isinstance(err.__cause__, ValueError | TypeError | OSError):
            raise
        failure = err.__cause__
    else:
        if not isinstance(data, ImageData):
            raise TypeError(
                f"dataset loader {node['_target_']} returned {type(data).__name__}, not ImageData"
            )
        return data
    raise failure


def clear_cache() -> None:
    """Forget every dataset this process has loaded (here and in the loaders' own caches)."""
    _instantiate_cached.cache_clear()
    torchvision_sets.clear_cache()
