"""What a client accepts in a received run config before it builds anything from it.

The run config travels to the clients as YAML in every message, and the client builds the
attack's, the data's and the model's pieces from its ``_target_`` entries with Hydra's
``instantiate``, which imports and calls whatever it names. On Flower's Deployment Runtime the
message comes over the network: a message naming ``os.system`` (or ``builtins.exec``, a file
writer, ``urllib.request.urlopen``, ``torch.hub.load``, ``pandas.read_pickle``) would run it
on the node, and an interpolation (``${oc.env:HOME}``) would be resolved on the node. Hydra's
own blocklist is not a security boundary (its maintainers say so), so the client checks the
config first (:func:`checked_config`):

* every ``_target_`` must start with an allowed prefix (:data:`ALLOWED_TARGETS`: this package,
  Flower Datasets' partitioners, the building blocks of ``torch.nn``, ``torch.optim`` and
  ``torchvision.models`` / ``.transforms`` -- not all of torch: ``torch.hub.load``,
  ``torch.load`` and ``torch.jit.load`` load code or pickles), plus the prefixes the node's own
  config adds (``--node-config "fedbackdoor-allowed-targets='mypkg.,other.mod.'"``), never
  the message;
* no value may be an interpolation (``${...}``): the server sends its config resolved.

Anything else raises :class:`UnsafeConfig` before an import happens: the ClientApp logs it and
Flower returns it to the server as the reply's error; nothing of the message is run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["ALLOWED_TARGETS", "NODE_CONFIG_KEY", "UnsafeConfig", "checked_config"]

#: ``_target_`` prefixes a client instantiates without being told more by its node.
ALLOWED_TARGETS: tuple[str, ...] = (
    "fedbackdoor.",
    "flwr_datasets.partitioner.",
    "torch.nn.",
    "torch.optim.",
    "torchvision.models.",
    "torchvision.transforms.",
)
#: The node config key whose comma-separated prefixes extend :data:`ALLOWED_TARGETS`.
NODE_CONFIG_KEY = "fedbackdoor-allowed-targets"
#: Never allowed, whatever prefix matches (``fedbackdoor.cli`` runs commands).
_NEVER: tuple[str, ...] = ("fedbackdoor.cli",)

_log = logging.getLogger(__name__)


class UnsafeConfig(ValueError):
    """A received run config names something a client must not run."""


def _walk(node: object, path: str = "") -> Iterator[tuple[str, object]]:
    """Every ``(dotted path, value)`` below ``node`` (dict keys and list indices)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
    else:
        yield path, node


def allowed_prefixes(node_config: Mapping[str, object] | None = None) -> tuple[str, ...]:
    """:data:`ALLOWED_TARGETS` and the node's own additions (``NODE_CONFIG_KEY``)."""
    extra = str((node_config or {}).get(NODE_CONFIG_KEY, "") or "")
    added = tuple(p.strip() for p in extra.split(",") if p.strip())
    return ALLOWED_TARGETS + added


def checked_config(cfg_yaml: str, node_config: Mapping[str, object] | None = None) -> DictConfig:
    """Parse a received run config and refuse it unless every ``_target_`` is allowed and
    nothing is an interpolation.

    Parameters
    ----------
    cfg_yaml : str
        The run config as the server sent it (resolved YAML).
    node_config : mapping, optional
        The node's own config (Flower's ``context.node_config``), for
        ``fedbackdoor-allowed-targets``.

    Returns
    -------
    DictConfig
        The parsed config (nothing in it resolved or instantiated).

    Raises
    ------
    UnsafeConfig
        Naming the key and the value refused; logged as an error too.

    Notes
    -----
    Every message of a run carries the same config: an accepted one is remembered (by its
    text and the node's prefixes), so a client checks it once per process, not once per round.
    The returned config is shared between those calls: read it, do not change it.
    """
    return _checked(cfg_yaml, allowed_prefixes(node_config))


@functools.lru_cache(maxsize=8)
def _checked(cfg_yaml: str, prefixes: tuple[str, ...]) -> DictConfig:
    try:
        cfg = OmegaConf.create(cfg_yaml)
    except Exception as exc:  # noqa: BLE001 (any parse failure is a refusal)
        raise _refuse(f"the run config is not readable YAML ({type(exc).__name__})") from None
    if not isinstance(cfg, DictConfig):
        raise _refuse("the run config is not a mapping")
    for path, value in _walk(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, str) and "${" in value:
            raise _refuse(f"{path}={value!r}: interpolations are not accepted in a received config")
        if path == "_target_" or path.endswith("._target_"):
            target = str(value)
            if target.startswith(_NEVER) or not target.startswith(prefixes):
                raise _refuse(
                    f"{path}={target!r} is not an allowed target (allowed: "
                    f"{', '.join(prefixes)}; a node adds its own with --node-config "
                    f"\"{NODE_CONFIG_KEY}='prefix.'\")"
                )
    return cfg


def _refuse(message: str) -> UnsafeConfig:
    error = UnsafeConfig(f"refused a run config: {message}")
    _log.error("%s", error)
    return error


def targets(cfg: DictConfig) -> Sequence[str]:
    """Every ``_target_`` in ``cfg`` (for tests and audits)."""
    return [
        str(value)
        for path, value in _walk(OmegaConf.to_container(cfg, resolve=False))
        if path == "_target_" or path.endswith("._target_")
    ]
