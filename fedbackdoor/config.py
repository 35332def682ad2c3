"""A run's config: composing it from ``conf/`` and Hydra overrides, and the checks of a
composed config that Hydra's schema cannot express.

Every check names the offending key and value, so a bad sweep point fails at once with one
line instead of deep inside a Ray actor.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

if TYPE_CHECKING:
    import torch

#: The Hydra config tree. Override with FEDBACKDOOR_CONF_DIR (e.g. a copy with your presets).
CONF_DIR = Path(
    os.environ.get("FEDBACKDOOR_CONF_DIR", Path(__file__).resolve().parents[1] / "conf")
)

#: Config groups nested in ``attack``: ``attack.<name>=<option>`` chooses one of their options.
NESTED_GROUPS = ("attack.update", "attack.trigger")


def normalize_overrides(overrides: list[str]) -> list[str]:
    """Let ``attack.update=<name>`` (and ``attack.trigger=<name>``) choose a group option.

    Written with a dot, Hydra would store the name as a string in place of the option's node;
    ``attack/update=<name>`` is Hydra's spelling for choosing it. Values given as a dict or
    list, and keys below it (``attack.update.apply=...``), pass unchanged.
    """
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        bare = key.lstrip("+")
        if sep and bare in NESTED_GROUPS and not value.startswith(("{", "[")):
            item = f"{key[: len(key) - len(bare)]}{bare.replace('.', '/')}={value}"
        out.append(item)
    return out


def compose_run(overrides: list[str] | None = None) -> tuple[DictConfig, dict[str, object]]:
    """The run config from ``conf/`` and Hydra overrides, without starting a Hydra job, and
    the run's ``meta`` for ``run.json``: the group ``choices`` and the ``overrides``."""
    from hydra import compose, initialize_config_dir

    overrides = normalize_overrides(list(overrides or []))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, {"choices": dict(choices), "overrides": overrides}


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The run config from ``conf/`` and Hydra overrides, without starting a Hydra job."""
    return compose_run(overrides)[0]


class ConfigError(ValueError):
    """A config value is out of range or inconsistent with another."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(low: int) -> tuple[Callable[[object], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"  # type: ignore[operator]


def _number_above(low: float) -> tuple[Callable[[object], bool], str]:
    return (lambda v: _is_number(v) and low < v < math.inf), f"a number > {low:g}"  # type: ignore[operator]


def _number_from(low: float) -> tuple[Callable[[object], bool], str]:
    return (lambda v: _is_number(v) and low <= v < math.inf), f"a number >= {low:g}"  # type: ignore[operator]


def _share() -> tuple[Callable[[object], bool], str]:
    return (lambda v: _is_number(v) and 0.0 <= v <= 1.0), "a number in [0, 1]"  # type: ignore[operator]


def _optional(rule: tuple[Callable[[object], bool], str]) -> tuple[Callable[[object], bool], str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"null or {text}"


#: The config's own keys and what each must hold. Settings of a component (a trigger's size, a
#: rule's ``f``, PGD's bound, the attack window) are checked by the component itself when
#: :func:`validate` builds it; only keys no single component owns are listed here.
KEY_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "num_rounds": _int_at_least(1),
    "num_clients": _int_at_least(1),
    "clients_per_round": _int_at_least(1),
    "local_epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "eval_batch_size": _int_at_least(1),
    "lr": _number_above(0),
    "server_lr": _number_above(0),
    "round_timeout": _optional(_number_above(0)),
    "momentum": _number_from(0),
    "weight_decay": _number_from(0),
    "seed": _int_at_least(0),
    "device": (  # what fedbackdoor.models.resolve_device takes
        lambda v: isinstance(v, str) and re.fullmatch(r"cpu|auto|cuda(:\d+)?", v) is not None,
        "one of cpu, cuda, cuda:N, auto",
    ),
    "attack.fraction": _share(),
    "attack.per_round": _optional(_int_at_least(0)),
    "attack.poison_ratio": _share(),
    "attack.poison_count": _optional(_int_at_least(0)),
    "attack.local_epochs": _optional(_int_at_least(1)),
    "attack.lr": _optional(_number_above(0)),
    "attack.boost": (
        lambda v: v == "auto" or _number_above(0)[0](v),
        "a number > 0 or auto",
    ),
    "attack.start_round": _int_at_least(1),
    "attack.end_round": _optional((_is_int, "an integer")),
    "attack.every": _int_at_least(1),
    "attack.follows_protocol": (lambda v: isinstance(v, bool), "true or false"),
    "gradient_analysis": (lambda v: isinstance(v, bool), "true or false"),
    "posttrain.every": _optional(_int_at_least(1)),
    "checkpoint.every": _optional(_int_at_least(1)),
    "posttrain.server_size": _int_at_least(1),
    "backend.client_resources.num_cpus": _number_above(0),
    "backend.client_resources.num_gpus": _number_from(0),
    "backend.num_cpus": _optional(_int_at_least(1)),
    "backend.parallel_runs": _int_at_least(1),
}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad key of ``cfg``: the config's own keys
    (:data:`KEY_RULES`), the rules between keys, what the run needs of this machine (the
    device, a local Ray instance's cores and GPUs, a given data folder), then every component
    built once on a tiny input (the attack window, the round's sampling, the trigger, the
    poisoning, the update attack, the training-time attack, the defense), each checking its
    own settings."""
    for key, (check, requirement) in KEY_RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        _require(check(value), f"{key}={value!r} must be {requirement}")
    _check_cross_keys(cfg)
    _check_machine(cfg)
    _check_components(cfg)


_ABSENT = object()


def _check_cross_keys(cfg: DictConfig) -> None:
    """The rules between keys that no single component sees."""
    _require(
        cfg.clients_per_round <= cfg.num_clients,
        f"clients_per_round={cfg.clients_per_round} must be <= num_clients={cfg.num_clients}",
    )
    classes = cfg.dataset.num_classes
    attack = cfg.attack
    for key in ("target_label", "source_label"):
        label = attack.get(key)
        _require(
            (label is None and key == "source_label") or (_is_int(label) and 0 <= label < classes),
            f"attack.{key}={label!r} must be {'null or ' if key == 'source_label' else ''}"
            f"an integer in [0, {classes - 1}] (dataset.num_classes={classes})",
        )
    update = attack.get("update")
    _require(
        update is None or isinstance(update, DictConfig),
        f"attack.update={update!r} must be an option of conf/attack/update "
        f"(choose it with attack.update=<name> on the command line, or attack/update=<name>)",
    )
    if attack.get("follows_protocol"):
        # Poisoned data, honest code: the attackers run the federation's training code, so
        # nothing that needs malicious code may be set.
        needs_code = {
            "attack.boost": attack.get("boost", 1.0) not in (1, 1.0),
            "attack.local_epochs": attack.get("local_epochs") is not None,
            "attack.lr": attack.get("lr") is not None,
            "attack.corrupt": attack.get("corrupt") is not None,
            "attack.update": isinstance(update, DictConfig)
            and (update.get("apply") is not None or update.get("train") is not None),
        }
        for key, set_ in needs_code.items():
            value = OmegaConf.select(cfg, key)
            shown = "(an update attack)" if key == "attack.update" else repr(value)
            _require(
                not set_,
                f"attack.follows_protocol=true (poisoned data, honest code) but {key}={shown} "
                "needs malicious code; set attack.follows_protocol=false or drop it",
            )
    for name in ("client_dp", "sanitize"):
        node = cfg.get(name)
        _require(
            node is None or isinstance(node, DictConfig),
            f"{name}={node!r} must be an option of conf/{name} (choose it with {name}=<option>)",
        )


def _check_machine(cfg: DictConfig) -> None:
    """What the run needs of this machine, which would otherwise fail only once Ray runs: a
    CUDA ``device`` that exists, client resources a local Ray instance (``backend.address``
    null) can ever grant (a joined cluster's cores and GPUs are not known here), and a given
    ``dataset.data_dir`` that exists."""
    import torch  # noqa: PLC0415 (heavy imports: only when validating)

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = str(cfg.device)
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        _require(
            index < gpus,
            f"device={device!r} but "
            + (
                "no CUDA device is visible on this machine (torch.cuda.is_available() is "
                "False); use device=cpu or auto"
                if gpus == 0
                else f"only {gpus} CUDA device(s) are visible on this machine (cuda:0 to "
                f"cuda:{gpus - 1})"
            ),
        )
    backend = cfg.get("backend")
    if isinstance(backend, DictConfig) and backend.get("address") is None:
        resources = backend.client_resources
        given = backend.get("num_cpus")
        cores = given if given is not None else os.cpu_count()
        _require(
            cores is None or resources.num_cpus <= cores,
            f"backend.client_resources.num_cpus={resources.num_cpus} is more than the cores "
            "of the local Ray instance ("
            + (f"backend.num_cpus={given}" if given is not None else f"os.cpu_count()={cores}")
            + "): no client could ever be scheduled",
        )
        _require(
            resources.num_gpus <= gpus,
            f"backend.client_resources.num_gpus={resources.num_gpus} but "
            + (
                "no CUDA device is visible on this machine for the local Ray instance"
                if gpus == 0
                else f"only {gpus} CUDA device(s) are visible on this machine"
            )
            + ": no client could ever be scheduled",
        )
    data_dir = OmegaConf.select(cfg, "dataset.data_dir")
    _require(
        data_dir is None or Path(str(data_dir)).expanduser().is_dir(),
        f"dataset.data_dir={data_dir!r} is not a folder on this machine (give the folder "
        "holding the dataset, or null to search the usual places)",
    )


def _last_line(exc: BaseException) -> str:
    """The reason a component gave, as one line: the innermost cause (Hydra wraps a target's
    own error in one that ends with the config path)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[-1] if text else repr(exc)


def _user_key(cfg: DictConfig, nodes: Sequence[str], message: str) -> str | None:
    """``key=value`` of the user-facing key behind the setting a component's ``message``
    names: a component gets its settings by interpolation (``norm_bound:
    ${attack.norm_bound}``), so the setting named in the message leads back to the key the
    user typed."""
    for path in nodes:
        node = OmegaConf.select(cfg, path)
        if not isinstance(node, DictConfig):
            continue
        for name in node:
            if not re.search(rf"\b{re.escape(str(name))}\b", message):
                continue
            raw = node._get_node(name)._value()  # type: ignore[union-attr]
            found = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
            key = found.group(1) if found else f"{path}.{name!s}"
            shown = repr(OmegaConf.select(cfg, key))
            # A long value (a 40x40 trigger pattern) is cut: the reason must stay readable.
            return f"{key}={shown if len(shown) <= 80 else shown[:76] + ' ...'}"
    return None


def _built(cfg: DictConfig, where: str, build: Callable[[], object]) -> None:
    """Run ``build``; a component that refuses its settings stops the run with one line
    naming the key behind the setting (or the config node) and the component's reason
    (Hydra's wrapping of the component's error is dropped)."""
    try:
        build()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 (any refusal of a setting, as one line)
        message = _last_line(exc)
        named = _user_key(cfg, [where], message)
        if named is None and _names_a_key(cfg, message):  # e.g. the attack window's own
            raise ConfigError(message) from None
        raise ConfigError(f"{named or where}: {message}") from None


def _names_a_key(cfg: DictConfig, message: str) -> bool:
    """Whether ``message`` starts with ``<key>=`` for a key of ``cfg``."""
    found = re.match(r"([\w.]+)=", message)
    return (
        found is not None
        and "." in found.group(1)
        and (OmegaConf.select(cfg, found.group(1), default=_ABSENT) is not _ABSENT)
    )


def _check_components(cfg: DictConfig) -> None:
    """Build every component of the run once, on tiny inputs, so that each checks its own
    settings before any data is loaded or Ray starts."""
    import torch  # noqa: PLC0415 (heavy imports: only when validating)
    from hydra.utils import instantiate  # noqa: PLC0415

    from fedbackdoor.experiment import build_defense  # noqa: PLC0415
    from fedbackdoor.sampling import AttackSchedule, choose_malicious, sample_round  # noqa: PLC0415
    from fedbackdoor.server_step import check_rule_runs  # noqa: PLC0415

    attack = cfg.attack
    _built(
        cfg,
        "attack window",
        lambda: AttackSchedule(
            attack.get("start_round", 1), attack.get("end_round"), attack.get("every", 1)
        ),
    )
    generator = torch.Generator().manual_seed(0)
    malicious = choose_malicious(int(cfg.num_clients), float(attack.fraction), generator=generator)
    _built(
        cfg,
        "sampling",
        lambda: sample_round(
            int(cfg.num_clients),
            int(cfg.clients_per_round),
            malicious,
            per_round=attack.get("per_round"),
            generator=generator,
        ),
    )
    size = tuple(int(s) for s in cfg.dataset.image_size)
    x = torch.rand(8, int(cfg.dataset.channels), *size, generator=generator)
    y = torch.arange(8) % int(cfg.dataset.num_classes)
    if attack.get("trigger") is not None:
        _built(cfg, "attack.trigger", lambda: instantiate(attack.trigger))
    if attack.get("poison") is not None:
        _built(
            cfg,
            "attack.poison",
            lambda: instantiate(attack.poison)(
                x, y, generator=generator, attacker_index=0, num_attackers=max(1, len(malicious))
            ),
        )
    _built(cfg, "attack.update.apply", lambda: _try_update_attack(cfg, generator))
    _built(cfg, "attack.update.train", lambda: _try_training_attack(cfg, x, y))
    if cfg.get("client_dp") is not None:
        _built(cfg, "client_dp", lambda: instantiate(cfg.client_dp))
    if cfg.get("sanitize") is not None:
        _built(cfg, "sanitize", lambda: _try_sanitizer(cfg, x, y, generator))
    for name, node in (OmegaConf.select(cfg, "posttrain.defenses") or {}).items():
        _built(cfg, f"posttrain.defenses.{name}", functools.partial(_try_signature, node))
    pieces = ["defense.rule"]
    pieces += [f"defense.pre.{i}" for i in range(len(cfg.defense.get("pre") or []))]
    pieces += [f"defense.post.{i}" for i in range(len(cfg.defense.get("post") or []))]
    try:
        defense = build_defense(cfg.defense)
        check_rule_runs(
            defense, int(cfg.clients_per_round), keys=f"clients_per_round={cfg.clients_per_round}"
        )
    except Exception as exc:  # noqa: BLE001 (any refusal of a setting, as one line)
        message = _last_line(exc)
        if "clients_per_round=" in message:
            raise ConfigError(message) from None
        named = _user_key(cfg, pieces, message)
        raise ConfigError(f"{named or 'defense'}: {message}") from None


def _try_sanitizer(
    cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> None:
    """Run the sanitizer on a tiny model and batch (its settings checked by itself)."""
    from hydra.utils import instantiate  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    classes = int(cfg.dataset.num_classes)
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, classes))
    model(x)  # materialise the lazy layer
    instantiate(cfg.sanitize)(model, x, y, generator=generator, num_classes=classes, device="cpu")


def _try_signature(node: object) -> None:
    """A post-training defense's settings name parameters of its function (running it needs
    a trained model; a setting it refuses when it runs is recorded in posttrain.csv)."""
    import functools  # noqa: PLC0415
    import inspect  # noqa: PLC0415

    from hydra.utils import instantiate  # noqa: PLC0415

    built = instantiate(node)
    if not isinstance(built, functools.partial):
        raise TypeError("a posttrain defense must be a function with `_partial_: true`")
    try:
        inspect.signature(built.func).bind_partial(**built.keywords)
    except TypeError as exc:
        raise TypeError(f"{built.func.__name__}: {exc}") from None


def _try_update_attack(cfg: DictConfig, generator: torch.Generator) -> None:
    import torch  # noqa: PLC0415

    from fedbackdoor.experiment import build_update_attack  # noqa: PLC0415

    n = int(cfg.clients_per_round)
    malicious = torch.zeros(n, dtype=torch.bool)
    malicious[0] = True
    updates = torch.randn(n, 16, generator=generator)
    build_update_attack(cfg)(updates, malicious, weights=torch.ones(n), generator=generator)


def _try_training_attack(cfg: DictConfig, x: object, y: object) -> None:
    from torch import nn  # noqa: PLC0415

    from fedbackdoor.experiment import build_local_attack  # noqa: PLC0415

    factory = build_local_attack(cfg)
    if factory is not None:
        model = nn.Sequential(nn.Flatten(), nn.LazyLinear(int(cfg.dataset.num_classes)))
        model(x)  # materialise the lazy layer
        factory(model, x, y)  # type: ignore[arg-type]
