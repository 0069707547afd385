"""What every part of :class:`~moorage.runtime.containers.Containers` shares: its collaborators, where a
container's files are, its records, and taking apart whatever exists of a container."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from moorage.config import Config
from moorage.errors import NotFound
from moorage.images.service import ImageManager
from moorage.node import apparmor_default
from moorage.node.apparmor import AppArmor
from moorage.node.apparmor import status as apparmor_status
from moorage.node.cgroupinfo import CgroupHost
from moorage.node.cgroups import driver as cgroup_driver
from moorage.observe.usage import UsageReader
from moorage.runtime import userns
from moorage.runtime.containers import conmon, image_volumes, writable
from moorage.runtime.containers.deletes import RuntimeDeletes
from moorage.runtime.containers.handlers import Handlers
from moorage.runtime.containers.oci import OciRuntime
from moorage.state.index import Index
from moorage.state.models import (
    CONTAINER_CREATED,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    ContainerRecord,
    SandboxRecord,
)
from moorage.store.records import Records

log = structlog.get_logger(__name__)
OOM_REPORT_WAIT = 5.0
"""Seconds a SIGKILLed container's exit waits at most for its conmon to exit, so a late ``oom`` file is not
missed. conmon exits right after it writes both, so the wait is that short in practice; under the emulated
test guest with the systemd driver, 1 s once missed an OOM kill (reported as Error)."""

KILL_WAIT_SECONDS = 10.0


class ContainerBase:
    def __init__(
        self,
        records: Records[ContainerRecord],
        config: Callable[[], Config],
        images: ImageManager,
        pods: Records[SandboxRecord],
        host: CgroupHost,
    ) -> None:
        self.config = config
        self.images = images
        self.pods = pods
        """The pods' records (read only: the pods' lifecycle is :class:`~moorage.runtime.pods.sandboxes.Sandboxes`')."""
        self.state = Path(config().state)
        self.root = Path(config().root)
        self.cgroups = cgroup_driver(config().cgroup_driver)
        self.cgroup_host = host
        self.usage = UsageReader(self.layer_dir, self.cgroups, host)
        self.handlers = Handlers(config, self.state, self.cgroups, host)
        self.apparmor = AppArmor.detect()
        self.records = records
        self.runtime_deletes = RuntimeDeletes()

    async def load(self) -> None:
        """Fill the in-memory index from the store (start-up, before anything is served or recovered)."""
        await self.records.load()

    # --- paths and runtimes ---------------------------------------------------------------------------------

    def bundle(self, container_id: str) -> Path:
        return self.state / "bundles" / container_id

    def layer_dir(self, container_id: str) -> Path:
        return self.root / "containers" / container_id

    def conmon_paths(self, container_id: str) -> conmon.ConmonPaths:
        return conmon.ConmonPaths(self.state, container_id)

    def log_path(self, record: ContainerRecord) -> Path:
        """Where conmon writes the CRI log: the kubelet's pod log dir + path, else beside the bundle."""
        return Path(record.status.log_path) if record.status.log_path else self.bundle(record.id) / "container.log"

    def runtime(self, handler: str) -> OciRuntime:
        return self.handlers.runtime(handler)

    def apparmor_status(self) -> dict[str, object]:
        return apparmor_status(self.apparmor, apparmor_default.NAME)

    # --- records ---------------------------------------------------------------------------------------------

    @property
    def index(self) -> Index[ContainerRecord]:
        return self.records.index

    async def get(self, container_id: str) -> ContainerRecord:
        return await self.records.get(container_id)

    def all(self, sandbox_id: str = "") -> list[ContainerRecord]:
        return self.records.all((lambda r: r.sandbox_id == sandbox_id) if sandbox_id else None)

    async def runtime_of(self, record: ContainerRecord) -> OciRuntime:
        sandbox = await self.pods.get(record.sandbox_id)
        return self.runtime(sandbox.status.runtime_handler)

    # --- taking a container apart, and its exit ---------------------------------------------------------------

    async def _undo(self, container_id: str, handler: str) -> None:
        await self._teardown(container_id, handler)
        await self.records.delete(container_id)

    async def _teardown(self, container_id: str, handler: str) -> None:
        """Whatever exists of a container on the node: the runtime's state, its root filesystem, its files."""
        await self.runtime_deletes.settle(self.runtime(handler), container_id)
        await asyncio.to_thread(self._remove_files, container_id)

    def _remove_files(self, container_id: str) -> None:
        """The container's files, in one thread hop (blocking): its root filesystem and writable layer, image
        volumes, user namespace mounts, conmon's files and the bundle."""
        bundle = self.bundle(container_id)
        writable.remove(self.layer_dir(container_id), bundle / "rootfs")
        image_volumes.remove(bundle)
        userns.remove_mounts(bundle)
        paths = self.conmon_paths(container_id)
        paths.exit_file.unlink(missing_ok=True)
        shutil.rmtree(paths.container_dir, True)
        shutil.rmtree(bundle, True)

    async def _record_exit(self, container_id: str) -> None:
        record = await self.get(container_id)
        if record.state not in (CONTAINER_RUNNING, CONTAINER_CREATED):
            return
        paths = self.conmon_paths(container_id)
        code = conmon.read_exit(paths.exits_dir, container_id)
        if code is None:
            return
        finished = max(paths.exit_file.stat().st_mtime_ns, record.status.started_at)  # mtimes are coarse
        oom = (paths.container_dir / "oom").exists()
        if not oom and code == 128 + signal.SIGKILL:  # killed: an OOM kill conmon has not reported yet?
            await conmon.wait_exited(paths, OOM_REPORT_WAIT)
            oom = (paths.container_dir / "oom").exists()
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        # As containerd does: the runtime's state goes with the exit. Its delete (a process spawn) runs while the
        # record is saved: nothing of the exit is read from the runtime, and a crash between the two leaves the
        # exit file, which start-up recovery records.
        self.runtime_deletes.after_exit(await self.runtime_of(record), container_id)
        await self.records.save(record.moved(CONTAINER_EXITED, exit_code=code, finished_at=finished, reason=reason))
        log.info("container exited", container=container_id, exit_code=code, reason=reason)


async def send_signal(runtime: OciRuntime, container_id: str, sig: int) -> None:
    try:
        await runtime.kill(container_id, int(sig))
    except NotFound:
        pass
    except Exception as exc:  # already stopped: the runtime refuses to signal it; the exit file tells
        log.debug("signal not delivered", container=container_id, signal=int(sig), error=str(exc))


async def wait_for(path: Path, seconds: float) -> bool:
    """Poll for ``path``: every 1 ms at first (a killed process is usually reaped and its exit file written
    within 1-2 ms of the runtime's kill returning), backing off to every 50 ms. A first poll of 5 ms made that
    wait a whole 5 ms in most StopContainers."""
    deadline = time.monotonic() + seconds
    interval = 0.001
    while time.monotonic() < deadline:
        if path.exists():
            return True
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.05)
    return path.exists()
