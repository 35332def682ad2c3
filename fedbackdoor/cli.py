"""The ``fedbackdoor`` command (also ``python -m fedbackdoor``).

``fedbackdoor run [hydra overrides]`` runs one simulation (``-m`` sweeps) and prints its output
directory as the last line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from fedbackdoor.config import CONF_DIR, ConfigError, normalize_overrides, validate
from fedbackdoor.run_files import is_complete
from fedbackdoor.run_guard import RunLock, RunLocked, other_settings
from fedbackdoor.stopping import STOP, mark_stopped

USAGE = """usage: fedbackdoor run [HYDRA_OVERRIDES ...]   run one simulation (-m: a sweep)
       fedbackdoor run --help                    Hydra's help: config groups and options
       fedbackdoor flower [--supernodes N] [HYDRA_OVERRIDES ...]
                                                 the same through `flwr run` on a local
                                                 SuperLink (N SuperNodes: Deployment Runtime)
       fedbackdoor report DIR [--threshold T]    tables and figures of every run below DIR
                                                 (a sweep), written to DIR/report/
       fedbackdoor tune [--trials N] [--curve F1,F2,...] [--out DIR] OVERRIDES ...
                                                 search the config for the settings that
                                                 resist backdoors best (Optuna; see --help)

examples:
  fedbackdoor run                                  the default study (Fashion-MNIST, BadNets)
  fedbackdoor run defense=median attack.fraction=0.2
  fedbackdoor run -m attack.fraction=0,0.1,0.2 defense=fedavg,clip,median seed=0,1
  fedbackdoor report outputs/sweeps/2026-01-01_12-00-00
  fedbackdoor tune 'lr=interval(0.01,0.2)' 'local_epochs=range(1,5)' attack.fraction=0.1
"""


def _run_job(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        validate(cfg)
    except ConfigError as exc:
        print(f"fedbackdoor: invalid config: {exc}", file=sys.stderr)
        if sweep:  # one bad point of a grid must not stop the others; main() exits 1
            _skipped.append(f"{run_dir}: invalid config")
            return
        raise SystemExit(2) from None
    held = other_settings(run_dir, cfg)
    if held is not None:  # never over another run's results
        print(
            f"fedbackdoor: {run_dir} holds a run of other settings (status {held}); it is not "
            "overwritten: give another hydra.run.dir (hydra.sweep.dir for a sweep)",
            file=sys.stderr,
        )
        if sweep:
            _skipped.append(f"{run_dir}: holds a run of other settings")
            return
        raise SystemExit(2)
    try:
        lock = RunLock(run_dir)
    except RunLocked as exc:  # another process runs this folder: never twice at once
        print(f"fedbackdoor: {exc}", file=sys.stderr)
        if sweep:
            _skipped.append(str(exc))
            return
        raise SystemExit(1) from None
    if is_complete(run_dir, cfg):  # the same command again: its results stay as they are
        lock.release()
        print(f"fedbackdoor: {run_dir} is complete, skipped", flush=True)
        if not sweep:
            print(run_dir.resolve(), flush=True)
        return
    # flwr and Ray only for a valid config
    from fedbackdoor.fl.simulation import run_simulation, shared_engine

    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}
    meta = {"choices": dict(choices), "overrides": list(hydra_cfg.overrides.task)}
    queued = False
    try:
        if sweep:  # runs of a sweep share one simulation engine (Ray and warm actors)
            engine = shared_engine(cfg)
            if engine.parallel > 1:  # queued: main() waits for them after the launcher
                label = f"[{hydra_cfg.job.num}]"
                _pending.append((engine, engine.submit(cfg, run_dir, meta, label=label), lock))
                queued = True
                return
            engine.run(cfg, run_dir, meta)
        else:
            run_simulation(cfg, run_dir, meta)
    except (FileNotFoundError, ConnectionError, TimeoutError) as exc:  # one line: a dataset
        # that is nowhere (where we looked), a Ray address that does not answer, nodes that
        # never came
        print(f"fedbackdoor: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if not queued:
            lock.release()
            _draw(run_dir)
    if not sweep:
        print(run_dir.resolve(), flush=True)


class SweepDirCallback(Callback):
    """Remembers a multirun's sweep directory in the launching process (whatever the
    launcher), so ``fedbackdoor run -m`` can print it last."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _sweep_dirs.append(Path(str(config.hydra.sweep.dir)).resolve())


_sweep_dirs: list[Path] = []
_pending: list[tuple[Any, Any, RunLock]] = []  # (Engine, job, lock): runs queued in parallel
_skipped: list[str] = []  # sweep points not run: invalid, another run's folder, locked


def _draw(run_dir: Path) -> None:
    """The run's figure (``accuracy.png``), if it logged a round; never fails the run."""
    from fedbackdoor.run_figure import plot_run_dir  # matplotlib only where figures are drawn

    try:
        if (run_dir / "metrics.csv").exists():
            plot_run_dir(run_dir)
    except Exception as exc:  # noqa: BLE001 (a figure must not cost the results)
        print(f"fedbackdoor: could not draw {run_dir / 'accuracy.png'}: {exc}", file=sys.stderr)


def _wait_pending() -> None:
    """Wait for the runs a parallel sweep queued; name each that failed; exit 1 if any did."""
    failed = 0
    while _pending:
        engine, job, lock = _pending.pop(0)
        try:
            engine.wait(job)
        except Exception as exc:  # one failed run must not hide the others' results
            failed += 1
            print(f"fedbackdoor: run {job.run_dir} failed: {exc!r}", file=sys.stderr)
        finally:
            lock.release()
            _draw(job.run_dir)
    if failed:
        raise SystemExit(1)


_hydra_main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
    _run_job
)


def _close_engine(wait: bool) -> None:
    if _sweep_dirs:  # only sweeps start the shared engine
        from fedbackdoor.fl.simulation import close_shared_engine

        close_shared_engine(wait=wait)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler, ``kill``): as Ctrl-C, with the shell's exit code for it."""
    del frame
    _interrupted(code=128 + signum, why="terminated")


def _interrupted(code: int = 130, why: str = "interrupted") -> None:
    """Ctrl-C: stop now, not after the run in progress (which could take minutes).

    Runs in progress are told to stop (:data:`fedbackdoor.stopping.STOP`: their
    ``run.json`` stays "running" and a restarted sweep redoes them; finished runs and the rows
    already written stay) and the process exits with 130 at once, without waiting for Flower's
    threads. Not ``ray.shutdown()``: Flower's threads would then touch a stopped Ray client,
    which ends the process with Ray's own exit code 1; the local Ray's processes are stopped
    by signals instead (:func:`_stop_local_ray`).
    """
    print(
        f"fedbackdoor: {why}; runs in progress are left unfinished, marked stopped (run the "
        "same command again to resume a sweep)",
        file=sys.stderr,
        flush=True,
    )
    STOP.set()
    mark_stopped()
    _stop_local_ray()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stop_local_ray() -> None:
    """Ask the Ray processes this process started to stop (SIGTERM: the raylet then stops its
    agents and workers), without waiting: this process exits right after, before its own Ray
    client notices (it would end the process with exit code 1)."""
    worker = sys.modules.get("ray._private.worker")
    node = getattr(worker, "_global_node", None)
    if node is None or not getattr(node, "head", False):
        return  # Ray not started here, or joined (backend.address): not ours to stop
    pids = [
        info.process.pid
        for infos in getattr(node, "all_processes", {}).values()
        for info in infos
        if getattr(info, "process", None) is not None
    ]
    for pid in [*_descendants(pids), *pids]:  # the raylet's agents and workers first
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass  # already gone


def _descendants(roots: list[int]) -> list[int]:
    """Every process below ``roots`` (from ``/proc``; none where there is no ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found: list[int] = []
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


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
    if command == "report":
        from fedbackdoor.report import main as report_main

        report_main(rest)
        return
    if command == "tune":
        from fedbackdoor.tune import main as tune_main

        try:
            tune_main(rest)
        except KeyboardInterrupt:
            _interrupted()
        return
    if command != "run":
        print(f"fedbackdoor: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"{Path(sys.argv[0]).name} run", *normalize_overrides(rest)]
    _skipped.clear()  # main() may be called again in one process (simulations/_study.py)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # as Ctrl-C: stop now, runs left resumable
    try:
        _hydra_main()
        _wait_pending()
    except KeyboardInterrupt:
        _interrupted()
    except BaseException:  # failed: do not wait for a run to end
        _close_engine(wait=False)
        raise
    _close_engine(wait=True)
    if _sweep_dirs:  # a multirun: its directory last, as for a single run
        print(_sweep_dirs[-1], flush=True)
    if _skipped:  # the points that did not run, said again at the end; not a success
        print(f"fedbackdoor: {len(_skipped)} sweep point(s) not run:", file=sys.stderr)
        for line in _skipped:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)
