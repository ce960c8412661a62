"""Real Flower processes on 127.0.0.1 for the deployment tests.

A `Federation` makes a PKI, starts `flower-superlink` with TLS and SuperNode
authentication, writes the coordinator's `$FLWR_HOME/config.toml`, registers
site keys and starts `flower-supernode`s. Every process is started in its own
session and stopped by its PID (its process group), so the ClientApp and
ServerApp processes Flower spawns go with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from common.pki import add_site, init_pki, register_command

FEDERATION = "hospitals"
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

    def stop(self) -> None:
        """SIGTERM to the process group led by our PID, then SIGKILL if needed;
        then SIGKILL to what is left of the group (a ClientApp mid-message)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._fh.close()


class Federation:
    """A SuperLink with TLS + node auth, and the sites that join it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pki = self.root / "pki"
        self.flwr_home = self.root / "flwr-home"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[Process] = []
        self.env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(self.flwr_home)}
        init_pki(self.pki, "localhost,127.0.0.1")
        self.write_flwr_config()

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

    def start_superlink(self) -> Process:
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
                "--database",
                str(self.root / "superlink.db"),
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

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
