"""The ``fedbackdoor`` command (also ``python -m fedbackdoor``).

``fedbackdoor run [hydra overrides]`` runs one simulation (``-m`` sweeps) and prints its output
directory as the last line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fedbackdoor.config import ConfigError, validate

#: The Hydra config tree. Override with FEDBACKDOOR_CONF_DIR (e.g. a copy with your presets).
CONF_DIR = Path(
    os.environ.get("FEDBACKDOOR_CONF_DIR", Path(__file__).resolve().parents[1] / "conf")
)

USAGE = """usage: fedbackdoor run [HYDRA_OVERRIDES ...]   run one simulation (-m: a sweep)
       fedbackdoor run --help                    Hydra's help: config groups and options
       fedbackdoor flower [--supernodes N] [HYDRA_OVERRIDES ...]
                                                 the same through `flwr run` on a local
                                                 SuperLink (N SuperNodes: Deployment Runtime)

examples:
  fedbackdoor run                                  the default study (Fashion-MNIST, BadNets)
  fedbackdoor run defense=median attack.fraction=0.2
  fedbackdoor run -m attack.fraction=0,0.1,0.2 defense=fedavg,clip,median seed=0,1
"""


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The run config from ``conf/`` and Hydra overrides, without starting a Hydra job."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def _run_job(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
    except ConfigError as exc:
        print(f"fedbackdoor: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    from fedbackdoor.fl.simulation import run_simulation  # flwr, Ray: only for a valid config

    try:
        run_simulation(cfg, run_dir)
    except FileNotFoundError as exc:  # a dataset that is nowhere: say where we looked
        print(f"fedbackdoor: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if HydraConfig.get().mode == RunMode.RUN:
        print(run_dir.resolve(), flush=True)
    else:
        _sweep_dirs.append(Path(HydraConfig.get().sweep.dir).resolve())


_sweep_dirs: list[Path] = []


_hydra_main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
    _run_job
)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command == "flower":
        from fedbackdoor.fl.local_federation import main as flower_main

        flower_main(rest)
        return
    if command != "run":
        print(f"fedbackdoor: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"{Path(sys.argv[0]).name} run", *rest]
    _hydra_main()
    if _sweep_dirs:  # a multirun: its directory last, as for a single run
        print(_sweep_dirs[-1], flush=True)
