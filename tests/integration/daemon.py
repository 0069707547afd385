"""A real moorage daemon in a temporary root, started as a subprocess, for integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from moorage.cli.client import CriClient
from tests.fixtures.images import Image

START_TIMEOUT = float(os.environ.get("MOORAGE_TEST_START_TIMEOUT", "20"))  # the emulated v2 guest needs more
TEST_SANDBOX_IMAGE = "registry.invalid/pause:unused"
"""Tests' daemons name a sandbox image they never need, so their image store starts empty; the test of
moorage's own pause image sets sandbox_image itself."""


@dataclass(frozen=True)
class PushedImage:
    """An image a test pushed: the name to pull it by, what was built, and the digest the registry holds."""

    name: str
    image: Image
    digest: str


LOOPBACK_NETWORK = '{"cniVersion": "1.0.0", "name": "moorage-test-lo", "plugins": [{"type": "loopback"}]}'


class DaemonProcess:
    """Paths under one temp dir: config.toml, root/, state/, cni/ and the socket (short path: <108 bytes)."""

    def __init__(self, config_text: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="moorage-test-", dir="/tmp"))
        self.dir.chmod(0o711)  # containers of pods in user namespaces (an unprivileged host uid) pass through it
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.socket = self.dir / "run" / "moorage.sock"
        self.cni_dir = self.dir / "cni"
        self.config_path = self.dir / "config.toml"
        self.log_path = self.dir / "daemon.log"
        self.registries_conf = self.dir / "registries.conf"
        self.auth_file = self.dir / "auth.json"
        self.short_name_aliases = self.dir / "short-name-aliases.conf"
        self.certs_dir = self.dir / "certs.d"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_level: str | None = "debug"  # passed as --log-level; None: the config file decides
        self.netns: Path | None = None  # a test-made net namespace the daemon runs in (its CNI plugins too)
        self.open_files: tuple[int, int] | None = None  # the daemon's RLIMIT_NOFILE at start (soft, hard)
        self.write_config(config_text)

    def write_config(self, extra: str, image: str = "") -> None:
        """The test's config: ``extra`` TOML, plus temp paths that keep the host's /etc/cni, registries.conf
        and credential files out, plus ``image`` lines for the [image] table."""
        pause = "" if "sandbox_image" in extra else f'sandbox_image = "{TEST_SANDBOX_IMAGE}"\n'
        driver = os.environ.get("MOORAGE_TEST_CGROUP_DRIVER", "")  # the systemd run of make test-cgroupv2
        if driver and "cgroup_driver" not in extra:
            pause += f'cgroup_driver = "{driver}"\n'
        self.config_path.write_text(
            f'registries_conf = "{self.registries_conf}"\nshort_name_aliases = "{self.short_name_aliases}"\n'
            f"{pause}{extra}\n"
            f'[cni]\nconf_dir = "{self.cni_dir}"\n'
            f'[image]\nauth_files = ["{self.auth_file}"]\ncerts_dirs = ["{self.certs_dir}"]\n{image}\n'
        )

    def loopback_network(self) -> None:
        """A CNI network of the loopback plugin alone: pods get CNI ADD/DEL but no interface beyond ``lo``, so
        tests that are not about networking touch no network outside the pods' own namespaces."""
        self.cni_dir.mkdir(exist_ok=True)
        (self.cni_dir / "90-loopback.conflist").write_text(LOOPBACK_NETWORK)

    def trust_registry(self, host: str, extra: str = "") -> None:
        """registries.conf marking ``host`` (a test registry on 127.0.0.1) insecure: plain HTTP allowed."""
        self.registries_conf.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n{extra}')

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def serve_argv(self, *, socket: Path | None = None, root: Path | None = None) -> list[str]:
        argv = [sys.executable, "-m", "moorage.cli.main", "serve", "--config", str(self.config_path)]
        argv += ["--root", str(root or self.root), "--state", str(self.state), "--socket", str(socket or self.socket)]
        return argv + (["--log-level", self.log_level] if self.log_level else [])

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        argv = self.serve_argv()
        if self.netns is not None:
            argv = ["nsenter", f"--net={self.netns}", *argv]  # nsenter execs: proc.pid is the daemon's
        if self.open_files is not None:
            argv = ["prlimit", f"--nofile={self.open_files[0]}:{self.open_files[1]}", "--", *argv]  # execs too
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
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

    def remove_all_pods(self) -> None:
        """Remove every pod (and so its containers and cgroups) the daemon holds: a test's clean-up, run before
        the test's cgroup parent goes."""
        with self.client(timeout=60) as client:
            for pod in client.list_pods():
                client.remove_pod(pod.id)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def mounts(self) -> list[str]:
        """Mount points under the daemon's temp dir (pinned namespaces, pod /dev/shm, ...)."""
        return mounts_under(self.dir)


@contextlib.contextmanager
def running_node(registry_host: str, config_text: str = "") -> Iterator[DaemonProcess]:
    """A started daemon that trusts the test registry at ``registry_host``, with ``config_text`` TOML in its
    config (tables too); removed afterwards."""
    d = DaemonProcess(config_text)
    try:
        d.trust_registry(registry_host)
        d.loopback_network()
        d.start()
        yield d
    finally:
        d.cleanup()


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return points


def unmount_under(directory: Path) -> None:
    """Detach whatever a test's daemon left mounted in its temp dir, deepest first."""
    for point in sorted(mounts_under(directory), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
