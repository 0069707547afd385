"""A real moorage daemon in a temporary root, started as a subprocess, for integration tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from moorage.cli.client import CriClient

START_TIMEOUT = 20.0


class DaemonProcess:
    """Paths under one temp dir: config.toml, root/, state/, cni/ and the socket (short path: <108 bytes)."""

    def __init__(self, config_text: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="moorage-test-", dir="/tmp"))
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.socket = self.dir / "run" / "moorage.sock"
        self.cni_dir = self.dir / "cni"
        self.config_path = self.dir / "config.toml"
        self.log_path = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_level: str | None = "debug"  # passed as --log-level; None: the config file decides
        self.write_config(config_text)

    def write_config(self, extra: str) -> None:
        """The test's config: its temp CNI dir (keeps the host's /etc/cni out) plus ``extra`` TOML."""
        self.config_path.write_text(f'{extra}\n[cni]\nconf_dir = "{self.cni_dir}"\n')

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def serve_argv(self, *, socket: Path | None = None, root: Path | None = None) -> list[str]:
        argv = [sys.executable, "-m", "moorage.cli.main", "serve", "--config", str(self.config_path)]
        argv += ["--root", str(root or self.root), "--state", str(self.state), "--socket", str(socket or self.socket)]
        return argv + (["--log-level", self.log_level] if self.log_level else [])

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        self.proc = subprocess.Popen(self.serve_argv(), stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    with self.client(timeout=1) as client:
                        client.version()
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not answer within {START_TIMEOUT}s:\n{self.log()}")

    def client(self, timeout: float = 10.0) -> CriClient:
        return CriClient(self.endpoint, timeout=timeout)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code (negative: killed by a signal)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
