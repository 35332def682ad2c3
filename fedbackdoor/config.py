"""A run's config: composing it from ``conf/`` and Hydra overrides, and the checks of a
composed config that Hydra's schema cannot express.

Every check names the offending key and value, so a bad sweep point fails at once with one
line instead of deep inside a Ray actor.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

from fedbackdoor.sampling import AttackSchedule, malicious_count

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


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad key of ``cfg``."""
    for key in (
        "num_rounds",
        "num_clients",
        "clients_per_round",
        "local_epochs",
        "batch_size",
        "eval_batch_size",
    ):
        value = cfg[key]
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"{key}={value!r} must be an integer >= 1",
        )
    _require(
        cfg.clients_per_round <= cfg.num_clients,
        f"clients_per_round={cfg.clients_per_round} must be <= num_clients={cfg.num_clients}",
    )
    for key in ("lr", "server_lr"):
        _require(
            isinstance(cfg[key], int | float) and cfg[key] > 0,
            f"{key}={cfg[key]!r} must be a number > 0",
        )
    for key in ("momentum", "weight_decay"):
        _require(
            isinstance(cfg[key], int | float) and cfg[key] >= 0,
            f"{key}={cfg[key]!r} must be a number >= 0",
        )
    _require(
        isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool),
        f"seed={cfg.seed!r} must be an integer",
    )
    device = str(cfg.device)
    _require(
        device in ("cpu", "cuda", "auto") or device.startswith("cuda:"),
        f"device={device!r} must be one of cpu, cuda, cuda:N, auto",
    )

    attack = cfg.attack
    fraction = attack.fraction
    _require(
        isinstance(fraction, int | float) and 0.0 <= fraction <= 1.0,
        f"attack.fraction={fraction!r} must be a number in [0, 1]",
    )
    n_malicious = malicious_count(cfg.num_clients, fraction)
    per_round = attack.get("per_round")
    if per_round is not None:
        _require(
            isinstance(per_round, int) and per_round >= 0,
            f"attack.per_round={per_round!r} must be null or an integer >= 0",
        )
        _require(
            per_round <= cfg.clients_per_round,
            f"attack.per_round={per_round} exceeds clients_per_round={cfg.clients_per_round}",
        )
        _require(
            per_round <= n_malicious,
            f"attack.per_round={per_round} exceeds the {n_malicious} malicious clients "
            f"that attack.fraction={fraction} gives of num_clients={cfg.num_clients}",
        )
        _require(
            cfg.clients_per_round - per_round <= cfg.num_clients - n_malicious,
            f"attack.per_round={per_round}: too few benign clients to fill "
            f"clients_per_round={cfg.clients_per_round}",
        )
    ratio = attack.get("poison_ratio", 0.0)
    _require(
        isinstance(ratio, int | float) and 0.0 <= ratio <= 1.0,
        f"attack.poison_ratio={ratio!r} must be a number in [0, 1]",
    )
    target = attack.get("target_label", 0)
    classes = cfg.dataset.num_classes
    _require(
        isinstance(target, int) and 0 <= target < classes,
        f"attack.target_label={target!r} must be an integer in [0, {classes - 1}]",
    )
    source = attack.get("source_label")
    _require(
        source is None or (isinstance(source, int) and 0 <= source < classes),
        f"attack.source_label={source!r} must be null or an integer in [0, {classes - 1}]",
    )
    boost = attack.get("boost", 1.0)
    _require(
        boost == "auto" or (isinstance(boost, int | float) and boost > 0),
        f"attack.boost={boost!r} must be a number > 0 or auto",
    )
    update = attack.get("update")
    _require(
        update is None or isinstance(update, DictConfig),
        f"attack.update={update!r} must be an option of conf/attack/update "
        f"(choose it with attack.update=<name> on the command line, or attack/update=<name>)",
    )
    count = attack.get("poison_count")
    _require(
        count is None or (isinstance(count, int) and not isinstance(count, bool) and count >= 0),
        f"attack.poison_count={count!r} must be null or an integer >= 0",
    )
    local_epochs = attack.get("local_epochs")
    _require(
        local_epochs is None
        or (
            isinstance(local_epochs, int)
            and not isinstance(local_epochs, bool)
            and local_epochs >= 1
        ),
        f"attack.local_epochs={local_epochs!r} must be null or an integer >= 1",
    )
    for key in ("lr", "norm_bound"):
        value = attack.get(key)
        _require(
            value is None
            or (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and 0 < value < float("inf")
            ),
            f"attack.{key}={value!r} must be null or a number > 0",
        )
    mask_ratio = attack.get("mask_ratio")
    _require(
        mask_ratio is None or (isinstance(mask_ratio, int | float) and 0.0 <= mask_ratio <= 1.0),
        f"attack.mask_ratio={mask_ratio!r} must be a number in [0, 1]",
    )
    for key in ("start_round", "every"):
        value = attack.get(key, 1)
        _require(
            isinstance(value, int) and not isinstance(value, bool),
            f"attack.{key}={value!r} must be an integer",
        )
    end_round = attack.get("end_round")
    _require(
        end_round is None or (isinstance(end_round, int) and not isinstance(end_round, bool)),
        f"attack.end_round={end_round!r} must be null or an integer",
    )
    try:
        AttackSchedule(attack.get("start_round", 1), end_round, attack.get("every", 1))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    root_size = cfg.defense.get("root_size")
    _require(
        root_size is None
        or (isinstance(root_size, int) and not isinstance(root_size, bool) and root_size >= 1),
        f"defense.root_size={root_size!r} must be an integer >= 1",
    )

    resources = cfg.backend.client_resources
    _require(
        resources.num_cpus > 0,
        f"backend.client_resources.num_cpus={resources.num_cpus!r} must be > 0",
    )
    _require(
        resources.num_gpus >= 0,
        f"backend.client_resources.num_gpus={resources.num_gpus!r} must be >= 0",
    )
    _check_defense_runs(cfg)

    parallel = cfg.backend.get("parallel_runs", 1)
    _require(
        isinstance(parallel, int) and not isinstance(parallel, bool) and parallel >= 1,
        f"backend.parallel_runs={parallel!r} must be an integer >= 1",
    )


def _check_defense_runs(cfg: DictConfig) -> None:
    """A rule that can never run with ``clients_per_round`` updates (Bulyan with
    ``n < 4f + 3``, Krum with ``n <= 2f + 2``, ...) stops the run here, naming the keys; a
    setting the rule refuses stops it too (``defense.<key>`` named by the rule's message)."""
    from fedbackdoor.defenses.pipeline import build_defense  # noqa: PLC0415 (heavy imports)
    from fedbackdoor.server_step import check_rule_runs  # noqa: PLC0415

    try:
        defense = build_defense(cfg.defense)
    except Exception as exc:  # Hydra wraps the rule's own error: keep its last line
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ConfigError(f"defense: {message}") from None
    try:
        check_rule_runs(
            defense,
            int(cfg.clients_per_round),
            keys=f"clients_per_round={cfg.clients_per_round}",
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
