"""Real Flower processes on 127.0.0.1 for the deployment tests.

A `Federation` makes a PKI, starts `flower-superlink` with TLS and SuperNode
authentication, writes the coordinator's `$FLWR_HOME/config.toml`, registers
site keys and starts `flower-supernode`s. Every process is started in its own
session and stopped by its PID (its process group), so the ClientApp and
ServerApp processes Flower spawns go with it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.privacy.pki import add_site, init_pki, register_command

FEDERATION = "hospitals"
# the app under test: this checkout (a worktree may differ from the editable install)
APP_DIR = Path(__file__).resolve().parents[1]
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """One started command, its log file, and how to stop it."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict, cwd=None):
        self.name, self.cmd, self.log = name, cmd, log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: children go with it
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """Wait until the log matches `pattern`; fail early if the process ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(
            f"{self.name}: no {pattern!r} within {timeout}s "
            f"(exit code {self.proc.poll()}); log tail:\n{self.text()[-3000:]}"
        )

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL to the whole process group at once: a machine that dies, with
        the ClientApp it was running; no chance to say goodbye."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM to the process group led by our PID, then SIGKILL if needed;
        then SIGKILL to what is left of the group (a ClientApp mid-message) and
        to every descendant found before: the SuperLink starts its SuperExec in
        a session of its own, and that one's ServerApps outlive the group."""
        tree = descendants(self.proc.pid) if self.proc.poll() is None else []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._fh.close()


# Put first on the SuperNodes' PATH as `flwr-clientapp`: the real one starts
# once one of the host's slots is free. Each slot is an flock held by the
# ClientApp process itself (the descriptor survives exec and is released when
# the process ends, however it ends).
CLIENTAPP_GATE = """#!{python}
import fcntl, os, sys, time

while True:
    for slot in range({slots}):
        fd = os.open(os.path.join({folder!r}, f"slot-{{slot}}"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.set_inheritable(fd, True)
        os.execv({real!r}, [{real!r}, *sys.argv[1:]])
    time.sleep(0.2)
"""


class Federation:
    """A SuperLink with TLS + node auth, and the sites that join it.

    `max_clientapps` bounds how many ClientApp processes run at once on this
    host (all SuperNodes together). Real sites each have their own machine; on
    one test host, 20 SuperNodes would otherwise start 20 TensorFlow processes
    at once (~0.7 GB each when training), more memory than a CI runner has.
    """

    def __init__(self, root: Path, max_clientapps: int | None = None):
        self.root = Path(root)
        self.pki = self.root / "pki"
        self.flwr_home = self.root / "flwr-home"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[Process] = []
        self._sockets: Path | None = None  # the site workers' (see worker_socket)
        # PYTHONPATH: Flower's own subprocesses import this checkout's packages too
        python_path = os.pathsep.join(
            p for p in (str(APP_DIR), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env = {
            **os.environ,
            **QUIET_ENV,
            "FLWR_HOME": str(self.flwr_home),
            "PYTHONPATH": python_path,
        }
        if max_clientapps:
            self.env["PATH"] = (
                f"{self._clientapp_gate(max_clientapps)}:{os.environ['PATH']}"
            )
        init_pki(self.pki, "localhost,127.0.0.1")
        self.write_flwr_config()

    def _clientapp_gate(self, slots: int) -> Path:
        """A folder holding the gated `flwr-clientapp` (see CLIENTAPP_GATE)."""
        real = shutil.which("flwr-clientapp")
        assert real, "flwr-clientapp is not on PATH"
        folder = self.root / "gate"
        folder.mkdir(parents=True, exist_ok=True)
        gate = folder / "flwr-clientapp"
        gate.write_text(
            CLIENTAPP_GATE.format(
                python=sys.executable, slots=slots, folder=str(folder), real=real
            )
        )
        gate.chmod(0o755)
        return folder

    def write_flwr_config(self, root_certificates: Path | None = None) -> Path:
        """The coordinator's federation entry: address and the federation's CA."""
        ca = root_certificates or self.pki / "ca.crt"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        config = self.flwr_home / "config.toml"
        config.write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n'
            f"[superlink.{FEDERATION}]\n"
            f'address = "{self.address}"\n'
            f'root-certificates = "{ca.resolve()}"\n'
        )
        return config

    def start(self, name: str, cmd: list[str], cwd=None) -> Process:
        proc = Process(name, cmd, self.logs / f"{name}.log", self.env, cwd)
        self.processes.append(proc)
        return proc

    def start_superlink(self, database: bool = True) -> Process:
        """The SuperLink; its state in `superlink.db` if `database`, else in
        memory. In memory there is no SQLite (on a loaded host its "database is
        locked" reached the Fleet API as HTTP 500s, and a SuperNode that got one
        on pull-messages stopped polling and was dropped as offline), but the
        sites' training was not reproducible with it: round-1 losses of the
        same 2-site run were d=6.598 with SQLite (4 runs, = the Simulation
        Engine) and 6.22, 8.25, 8.33 in memory; once with SQLite too (CI on a
        loaded host, d=8.64). The cause was the initial weights: Keras drew
        initializer seeds from Python's global `random`, which Flower's
        heartbeat thread also draws from in the ServerApp and ClientApp
        processes, so a heartbeat during the model's build changed them. Seeds
        now come from a private stream (`common.model.layers.seeded_initializers`);
        with that, the resume test passed against an in-memory SuperLink too,
        bit for bit. Runs that compare weights still use `database=True`, the
        setting `deploy/` uses."""
        state = ["--database", str(self.root / "superlink.db")] if database else []
        link = self.start(
            "superlink",
            [
                "flower-superlink",
                "--ssl-ca-certfile",
                str(self.pki / "ca.crt"),
                "--ssl-certfile",
                str(self.pki / "superlink" / "server.crt"),
                "--ssl-keyfile",
                str(self.pki / "superlink" / "server.key"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                *state,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )
        link.wait_for(r"Uvicorn running on https://", timeout=60)
        return link

    def add_site(self, name: str, register: bool = True) -> Path:
        """A site key; on the SuperLink's allow-list if `register`. Returns the key."""
        info = add_site(self.pki, name)
        if register:
            cmd = register_command(self.pki, name, FEDERATION)
            done = subprocess.run(
                cmd, env=self.env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stdout + done.stderr
        return info.key_path

    def start_supernode(
        self,
        name: str,
        key: Path | None,
        node_config: str = "",
        root_certificates: Path | None | bool = True,
        extra: list[str] | None = None,
        superlink: str | None = None,
    ) -> Process:
        """A SuperNode for `name` (connecting to `superlink`, default ours)."""
        cmd = ["flower-supernode", "--superlink", superlink or self.address]
        if root_certificates is True:
            cmd += ["--root-certificates", str(self.pki / "ca.crt")]
        elif root_certificates:
            cmd += ["--root-certificates", str(root_certificates)]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        if node_config:
            cmd += ["--node-config", node_config]
        cmd += ["--port", str(free_port()), *(extra or [])]
        return self.start(f"supernode-{name}", cmd)

    def start_sites(
        self, sites: dict[str, tuple[Path, str]], workers: bool = False
    ) -> dict[str, Process]:
        """Register and start one SuperNode per site {name: (data dir, role)},
        each with its own ingest cache (and, if `workers`, its own site worker
        beside it); returns them once all have joined."""
        nodes = {}
        for name, (data_dir, role) in sites.items():
            node_config = (
                f'data-dir="{data_dir}" role="{role}" '
                f'cache-dir="{self.root / "cache" / name}"'
            )
            if workers:
                node_config += f' site-worker-socket="{self.worker_socket(name)}"'
                self.start_worker(name, node_config)
            nodes[name] = self.start_supernode(name, self.add_site(name), node_config)
        for node in nodes.values():
            node.wait_for(r"SuperNode ID: \d+", timeout=120)
        return nodes

    def worker_socket(self, name: str) -> Path:
        """A site worker's socket: under /tmp, as a socket path has at most 107
        bytes (pytest's folders are longer); its folder made by the worker."""
        if self._sockets is None:
            self._sockets = Path(tempfile.mkdtemp(prefix="fbw-"))
        return self._sockets / name / "w.sock"

    def start_worker(self, name: str, node_config: str) -> Process:
        """`fedbigbigan site-worker` for a site, once it listens."""
        worker = self.start(
            f"worker-{name}",
            [sys.executable, "-m", "common.commands", "site-worker"]
            + ["--node-config", node_config],
            cwd=str(APP_DIR),
        )
        worker.wait_for(r"site worker \d+ listening on", timeout=120)
        return worker

    def flwr_run(self, run_config: str, name: str = "flwr-run") -> Process:
        """`flwr run` of this checkout's app on the federation, streaming its log."""
        return self.start(
            name,
            ["flwr", "run", str(APP_DIR), FEDERATION, "--stream"]
            + ["--run-config", run_config],
            cwd=str(APP_DIR),
        )

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """One `flwr` CLI command against the federation."""
        return subprocess.run(
            ["flwr", *args],
            env={**self.env, "COLUMNS": "250"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_info(self, run_id: int) -> dict | None:
        """`flwr list --run-id`: status, timings, traffic; None if not answered
        (under load the SuperLink's SQLite may say "database is locked")."""
        done = self.flwr(
            "list", FEDERATION, "--run-id", str(run_id), "--format", "json"
        )
        with contextlib.suppress(ValueError, KeyError, IndexError):
            return json.loads(done.stdout)["runs"][0]
        return None

    def run_log(self, run_id: int) -> str:
        """The run's whole ServerApp log as the SuperLink keeps it."""
        for _ in range(5):
            done = self.flwr("log", str(run_id), FEDERATION, "--show", timeout=120)
            if done.returncode == 0:
                return done.stdout
            time.sleep(2)
        raise AssertionError(f"flwr log {run_id}: {done.stdout}{done.stderr}")

    def wait_for_run(
        self, run: Process, timeout: float, check=lambda: None
    ) -> tuple[int, dict]:
        """Wait until the run `flwr run` started is finished, by asking the
        SuperLink (not by `flwr run --stream` ending: its log stream can end
        early, exit code 0, when the SuperLink's database is busy). `check()`
        is called every few seconds (to fail early). Returns (run id, info).

        Each `flwr list` is a Python process that imports Flower (1-2 s of CPU
        on a loaded 2-core host), so it is asked every 5 s only once the stream
        has ended, and every 30 s before that."""
        run_id = int(run.wait_for(r"Successfully started run (\d+)", 120).group(1))
        deadline = time.monotonic() + timeout
        asked = -math.inf
        while True:
            every = 5.0 if run.proc.poll() is not None else 30.0
            if time.monotonic() - asked >= every:
                asked = time.monotonic()
                info = self.run_info(run_id)
                if info and info["status"].startswith("finished"):
                    return run_id, info
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run {run_id} not finished within {timeout:.0f}s ({info}):\n"
                    + run.text()[-3000:]
                )
            check()
            time.sleep(1.0)

    def serverapp_pids(self) -> list[int]:
        """PIDs of the ServerApp processes the SuperLink started (via its
        SuperExec), found among the SuperLink's descendants."""
        link = next(p for p in self.processes if p.name == "superlink")
        found = []
        for pid in descendants(link.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:  # ended meanwhile
                continue
            if any(part.endswith(b"flwr-serverapp") for part in cmdline[:2]):
                found.append(pid)
        return found

    def stop(self) -> None:
        """Stop every process, even if stopping one fails or is interrupted."""
        failed: BaseException | None = None
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except BaseException as err:  # the rest must stop too
                failed = failed or err
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)
        if failed is not None:
            raise failed


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
