"""Run the same apps through Flower's own runtimes on this machine, with ``flwr run``.

``fedbackdoor run`` drives the Simulation Runtime from Python (for Hydra). This module shows,
and lets tests check, that the ServerApp and ClientApp named in ``pyproject.toml`` run
unchanged under Flower's CLI:

* **simulation**: a SuperLink started with ``--simulation`` runs the ClientApps on Ray;
* **deployment**: a SuperLink plus ``N`` SuperNodes, separate processes talking over the
  network (here loopback), as on a real federation. With fewer SuperNodes than sampled
  clients, each SuperNode trains several partitions in turn.

Every process is started in its own session and stopped at the end, runtime dependency
installation is disabled (the venv already has everything), and ``FLWR_HOME`` is a private
folder, so nothing is left behind.

    fedbackdoor flower [--supernodes N] [HYDRA_OVERRIDES ...]
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from fedbackdoor.fl.certificates import make_certificates, make_node_keys

APP_DIR = Path(__file__).resolve().parents[2]  # the folder with pyproject.toml


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (flwr, flower-superlink, ...)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


@contextmanager
def _started(command: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        # The SuperLink and SuperNodes spawn app processes of their own: stop the session.
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with {proc.returncode}; see {log}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s; see {log}")


def run_local_federation(
    overrides: Sequence[str],
    *,
    supernodes: int | None = None,
    workdir: Path | None = None,
    timeout: float = 1800.0,
    tls: bool = False,
    node_auth: bool = False,
) -> Path:
    """Run one experiment with ``flwr run``; return its run directory.

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides, as for ``fedbackdoor run``.
    supernodes : int or None
        ``None``: the Simulation Runtime (one virtual node per client). An int: the Deployment
        Runtime with that many SuperNodes.
    workdir : Path, optional
        Where logs, ``FLWR_HOME`` and the run directory go (default: a new folder under
        ``outputs/flwr``).
    timeout : float
        Seconds before ``flwr run`` is given up.
    tls : bool
        Encrypt the SuperLink's connections (SuperNodes and the ``flwr`` CLI) with TLS, with
        certificates made for this run (:func:`fedbackdoor.fl.certificates.make_certificates`,
        in ``workdir/certificates``) instead of ``--insecure``.
    node_auth : bool
        With ``tls``: the SuperLink accepts only registered SuperNodes
        (``--enable-supernode-auth``); each SuperNode gets a key pair
        (:func:`~fedbackdoor.fl.certificates.make_node_keys`), its public key is registered with
        ``flwr supernode register`` and it signs in with its private key.
    """
    if node_auth and not tls:
        raise ValueError("node_auth needs tls (Flower refuses SuperNode authentication without)")
    if supernodes is not None and supernodes < 1:
        raise ValueError(f"supernodes={supernodes} must be >= 1")
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="local-", dir=_outputs()))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "flwr-home"
    home.mkdir(exist_ok=True)
    port = _free_port()
    certificates = make_certificates(workdir / "certificates") if tls else None
    security = (
        "insecure = true" if certificates is None else f'root-certificates = "{certificates.ca}"'
    )
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "fedbackdoor"\n\n'
        f'[superlink.fedbackdoor]\naddress = "127.0.0.1:{port}"\n{security}\n'
    )
    link_security = (
        ["--insecure"]
        if certificates is None
        else [
            "--ssl-ca-certfile", str(certificates.ca),
            "--ssl-certfile", str(certificates.server_cert),
            "--ssl-keyfile", str(certificates.server_key),
        ]
    )  # fmt: skip
    node_security = (
        ["--insecure"] if certificates is None else ["--root-certificates", str(certificates.ca)]
    )
    env = {
        **os.environ,
        # Flower's processes start each other by name (flower-superexec, flwr-serverapp, ...).
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        # Ray's announced default (leave CUDA_VISIBLE_DEVICES alone for clients with
        # num_gpus=0): Flower's Ray then skips its FutureWarning.
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": os.environ.get(
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"
        ),
    }
    overrides = list(overrides)
    if supernodes is not None:
        overrides.append(f"backend.min_nodes={supernodes}")
    superlink = [
        _bin("flower-superlink"),
        *link_security,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--health-server-address",
        f"127.0.0.1:{_free_port()}",
    ]
    if supernodes is None:
        superlink.append("--simulation")
    elif node_auth:
        superlink.append("--enable-supernode-auth")
    run_config = f'overrides="{shlex.join(overrides)}" output-dir="{workdir / "runs"}"'
    command = [
        _bin("flwr"),
        "run",
        str(APP_DIR),
        "fedbackdoor",
        "--stream",
        "--run-config",
        run_config,
    ]
    if supernodes is None:
        num_clients = _num_clients(overrides)
        command += ["--federation-config", f"num-supernodes={num_clients}"]

    with ExitStack() as stack:
        link = stack.enter_context(_started(superlink, workdir / "superlink.log", env))
        _wait_for_port(port, link, workdir / "superlink.log")
        for i in range(supernodes or 0):
            node = [
                _bin("flower-supernode"),
                *node_security,
                "--superlink",
                f"127.0.0.1:{port}",
                "--port",
                str(_free_port()),
            ]
            if node_auth:
                private, public = make_node_keys(workdir / "node-keys", f"supernode{i}")
                registered = subprocess.run(
                    [_bin("flwr"), "supernode", "register", str(public), "fedbackdoor"],
                    env=env, capture_output=True, text=True, timeout=120, cwd=workdir,
                )  # fmt: skip
                if registered.returncode != 0:
                    raise RuntimeError(
                        f"flwr supernode register failed: {registered.stdout}{registered.stderr}"
                    )
                node += ["--auth-supernode-private-key", str(private)]
            stack.enter_context(_started(node, workdir / f"supernode{i}.log", env))
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, cwd=workdir
        )
    (workdir / "flwr-run.log").write_text(result.stdout + result.stderr)
    runs = sorted((workdir / "runs").glob("*/metrics.csv"))
    if result.returncode != 0 or not runs:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise RuntimeError(f"flwr run failed (exit {result.returncode}); see {workdir}:\n{tail}")
    return runs[-1].parent


def _num_clients(overrides: Sequence[str]) -> int:
    from fedbackdoor.config import compose_config

    return int(compose_config(list(overrides)).num_clients)


def _outputs() -> Path:
    path = Path("outputs") / "flwr"
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="fedbackdoor flower",
        description="Run one experiment through `flwr run` on a local SuperLink: the "
        "Simulation Runtime, or the Deployment Runtime with --supernodes N.",
    )
    parser.add_argument(
        "--supernodes",
        type=int,
        default=None,
        help="start N SuperNodes (Deployment Runtime) instead of simulating",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="encrypt the SuperLink's connections with TLS (certificates made for the run)",
    )
    parser.add_argument(
        "--node-auth",
        action="store_true",
        help="with --supernodes: accept only registered SuperNodes (implies --tls)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `fedbackdoor run`")
    args = parser.parse_args(list(argv))
    run_dir = run_local_federation(
        args.overrides, supernodes=args.supernodes, tls=args.tls or args.node_auth,
        node_auth=args.node_auth,
    )  # fmt: skip
    print(run_dir.resolve(), flush=True)
