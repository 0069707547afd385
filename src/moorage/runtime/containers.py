"""Containers: Create, Start, Stop (signal, then SIGKILL), Remove, and the exit monitor.

Each container runs under its own conmon (CRI-O's model): conmon holds its stdio, writes the CRI log file
and records the exit code, so containers keep running and logging while moorage restarts. Moorage learns of
exits from conmon's exit files (:meth:`Containers.monitor`), also for exits that happened while it was down.

Persist first: a container is stored as CREATING before its root filesystem and its conmon are made, and
becomes CREATED once the runtime holds it; a failure undoes what was made, a crash is undone at the next
start (:meth:`Containers.recover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from moorage.api.cri import pb
from moorage.config import Config
from moorage.errors import FailedPrecondition, NotFound
from moorage.images.auth import Credentials
from moorage.images.catalog import ImageRecord, config_json
from moorage.images.service import ImageManager
from moorage.node.cgroupinfo import CgroupHost
from moorage.node.cgroups import driver as cgroup_driver
from moorage.runtime import conmon, writable
from moorage.runtime.conditions import find_binary
from moorage.runtime.container_records import ContainerRecords
from moorage.runtime.exec_sync import ExecResult, exec_sync
from moorage.runtime.handlers import Handlers
from moorage.runtime.oci import OciRuntime
from moorage.runtime.sandboxes import Sandboxes
from moorage.runtime.spec import SpecInputs, build, current_capabilities, nofile_ceiling, resources
from moorage.runtime.usage import UsageReader
from moorage.state.index import Index
from moorage.state.models import (
    CONTAINER_CREATED,
    CONTAINER_CREATING,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    READY,
    ContainerRecord,
    ContainerStatus,
    SandboxRecord,
    container_name,
)
from moorage.store.db import Store

log = structlog.get_logger(__name__)

MONITOR_INTERVAL = 0.2
KILL_WAIT_SECONDS = 10.0


class Containers:
    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        images: ImageManager,
        sandboxes: Sandboxes,
        host: CgroupHost,
    ) -> None:
        self.config = config
        self.images = images
        self.sandboxes = sandboxes
        self.state = Path(config().state)
        self.root = Path(config().root)
        self._exited: dict[str, asyncio.Event] = {}
        self.cgroups = cgroup_driver(config().cgroup_driver)
        self.cgroup_host = host
        self.usage = UsageReader(self.layer_dir, self.cgroups, host)
        self.handlers = Handlers(config, self.state, self.cgroups, host)
        self.records = ContainerRecords(store, sandboxes.events)

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

    # --- Create ---------------------------------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig) -> str:
        sandbox = await self.sandboxes.get(sandbox_id)
        if sandbox.state != READY:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is not ready ({sandbox.state})")
        image = await self.images.find(config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} is not on the node; pull it first (config.image.image)")
        pod = sandbox_config if sandbox_config.HasField("metadata") else pb.PodSandboxConfig.FromString(sandbox.config)
        meta = pod.metadata
        image_doc = config_json(image)
        runtime_config = image_doc.get("config") if isinstance(image_doc.get("config"), dict) else {}
        record = ContainerRecord(
            id=secrets.token_hex(32),
            sandbox_id=sandbox_id,
            name=container_name(config.metadata.name, config.metadata.attempt, meta.name, meta.namespace, meta.uid),
            state=CONTAINER_CREATING,
            created_at=time.time_ns(),
            image_id=image.id,
            config=config.SerializeToString(),
            status=ContainerStatus(
                log_path=str(Path(pod.log_directory) / config.log_path) if pod.log_directory and config.log_path
                else "",
                image=config.image.image,
                stop_signal=str(runtime_config.get("StopSignal") or "") if isinstance(runtime_config, dict) else "",
            ),
        )  # fmt: skip
        await self.records.insert(record)
        try:
            pid = await self._make(record, config, pod, sandbox, image)
            await self.records.save(record.moved(CONTAINER_CREATED, pid=pid))
        except BaseException:
            await asyncio.shield(self._undo(record.id, sandbox.status.runtime_handler))
            raise
        log.info("container created", container=record.id, name=record.name, pid=pid)
        return record.id

    async def _make(
        self,
        record: ContainerRecord,
        config: pb.ContainerConfig,
        pod: pb.PodSandboxConfig,
        sandbox: SandboxRecord,
        image: ImageRecord,
    ) -> int:
        bundle = self.bundle(record.id)
        rootfs = bundle / "rootfs"
        bundle.mkdir(parents=True, mode=0o700)
        chain = [layer.chain_id for layer in image.layers]
        await asyncio.to_thread(
            writable.mount, self.images.layers.snapshots.root, chain, self.layer_dir(record.id), rootfs
        )
        image_doc = config_json(image)
        namespaces = dict(sandbox.status.namespaces)
        pid_modes = (
            pod.linux.security_context.namespace_options.pid,
            config.linux.security_context.namespace_options.pid,
        )
        if pb.NamespaceMode.NODE in pid_modes:
            pass  # the node's PID namespace
        elif pid_modes[0] == pb.NamespaceMode.POD and record.id != sandbox.id:
            namespaces["pid"] = f"/proc/{sandbox.status.infra_pid}/ns/pid"  # the pod's, held by its pause process
        else:
            namespaces["pid"] = ""  # a PID namespace of its own (or, for the pause container, the pod's new one)
        spec = build(
            SpecInputs(
                container=config,
                sandbox=pod,
                image_config=image_doc.get("config") or {},  # type: ignore[arg-type]
                rootfs=rootfs,
                namespaces=namespaces,
                cgroups_path=self.cgroups.spec_path(pod.linux.cgroup_parent, record.id),
                hostname=Path(sandbox.status.files["/etc/hostname"]).read_text().strip(),
                pod_files={k: Path(v) for k, v in sandbox.status.files.items()},
                oom_score_adj_floor=_own_oom_score_adj(),
                seccomp_root=Path(self.config().runtime.seccomp_profile_root),
                available_capabilities=current_capabilities(),
                nofile_ceiling=nofile_ceiling(),
                cgroup_namespace=self.cgroup_host.unified,
            )
        )
        (bundle / "config.json").write_text(json.dumps(spec))
        log_path = self.log_path(record)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return await conmon.create_container(
            find_binary(self.config().runtime.conmon) or self.config().runtime.conmon,
            self.runtime(sandbox.status.runtime_handler),
            cid=record.id,
            name=record.name,
            bundle=bundle,
            state_dir=self.state,
            log_path=log_path,
            terminal=config.tty,
            stdin=config.stdin,
            leave_stdin_open=not config.stdin_once,
        )

    # --- the pause (infra) container of pods sharing one PID namespace ----------------------------------

    async def start_infra(self, sandbox: SandboxRecord, pod: pb.PodSandboxConfig) -> int:
        """Run the pod's pause process in the pod's namespaces and a new PID namespace; returns its pid.

        It is not a CRI container: it has no record of its own and is not listed; it lives and dies with
        the pod, under the pod's id."""
        name = self.config().sandbox_image
        image = await self.images.find(name)
        if image is None:
            image = await self.images.pull(name, Credentials())
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="POD"),
            image=pb.ImageSpec(image=name),
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.RuntimeDefault),
                    no_new_privs=True,
                    capabilities=pb.Capability(drop_capabilities=["ALL"]),
                )
            ),
        )
        infra = ContainerRecord(
            sandbox.id, sandbox.id, sandbox.name, CONTAINER_CREATING, time.time_ns(), image.id, b"", ContainerStatus()
        )
        try:
            pid = await self._make(infra, config, pod, sandbox, image)
            await self.runtime(sandbox.status.runtime_handler).start(sandbox.id)
        except BaseException:
            await asyncio.shield(self.remove_infra(sandbox))
            raise
        log.info("pause container started", sandbox=sandbox.id, pid=pid, image=name)
        return pid

    async def stop_infra(self, sandbox: SandboxRecord) -> None:
        await _signal(self.runtime(sandbox.status.runtime_handler), sandbox.id, signal.SIGKILL)
        await _wait_for(self.conmon_paths(sandbox.id).exit_file, KILL_WAIT_SECONDS)

    async def remove_infra(self, sandbox: SandboxRecord) -> None:
        await self._teardown(sandbox.id, sandbox.status.runtime_handler)

    # --- Start, Stop, Remove --------------------------------------------------------------------------------

    async def start(self, container_id: str) -> None:
        record = await self.get(container_id)
        if record.state != CONTAINER_CREATED:
            raise FailedPrecondition(f"container {container_id} is {record.state}, not CREATED; it cannot start")
        runtime = await self.runtime_of(record)
        started = time.time_ns()
        await runtime.start(container_id)
        await self.records.save(record.moved(CONTAINER_RUNNING, started_at=started))
        await self._record_exit(container_id)  # it may be done already, before the monitor could see it running
        log.info("container started", container=container_id)

    async def stop(self, container_id: str, timeout: int) -> None:
        """The image's STOPSIGNAL (default SIGTERM), then SIGKILL after ``timeout`` seconds; a stopped
        container is left as it is (api.proto)."""
        record = await self.get(container_id)
        if record.state not in (CONTAINER_RUNNING, CONTAINER_CREATED):
            return
        runtime = await self.runtime_of(record)
        exit_file = self.conmon_paths(container_id).exit_file
        if timeout > 0:
            await _signal(runtime, container_id, _parse_signal(record.status.stop_signal))
            if await _wait_for(exit_file, timeout):
                await self._record_exit(container_id)
                return
        await _signal(runtime, container_id, signal.SIGKILL)
        if not await _wait_for(exit_file, KILL_WAIT_SECONDS):
            raise FailedPrecondition(f"container {container_id} did not exit {KILL_WAIT_SECONDS} s after SIGKILL")
        await self._record_exit(container_id)

    async def remove(self, container_id: str) -> None:
        record = await self.get(container_id)
        if record.state in (CONTAINER_RUNNING, CONTAINER_CREATED):
            await self.stop(container_id, 0)
        sandbox = await self.sandboxes.get(record.sandbox_id)
        await self._undo(container_id, sandbox.status.runtime_handler)
        self.usage.forget(container_id)
        log.info("container removed", container=container_id)

    async def _undo(self, container_id: str, handler: str) -> None:
        await self._teardown(container_id, handler)
        await self.records.delete(container_id)

    async def _teardown(self, container_id: str, handler: str) -> None:
        """Whatever exists of a container on the node: the runtime's state, its root filesystem, its files."""
        runtime = self.runtime(handler)
        with contextlib.suppress(NotFound):
            await runtime.delete(container_id, force=True)
        await asyncio.to_thread(writable.remove, self.layer_dir(container_id), self.bundle(container_id) / "rootfs")
        paths = self.conmon_paths(container_id)
        for path in (paths.exit_file,):
            path.unlink(missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, paths.container_dir, True)
        await asyncio.to_thread(shutil.rmtree, self.bundle(container_id), True)

    # --- ExecSync, UpdateContainerResources ---------------------------------------------------------------

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> ExecResult:
        record = await self.get(container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state}, not RUNNING; cannot exec in it")
        return await exec_sync(await self.runtime_of(record), container_id, self.bundle(container_id), cmd, timeout)

    async def update_resources(self, container_id: str, linux: pb.LinuxContainerResources) -> None:
        """Apply new limits to a running container, and keep them in its config for later restarts."""
        record = await self.get(container_id)
        if record.state not in (CONTAINER_RUNNING, CONTAINER_CREATED):
            raise FailedPrecondition(f"container {container_id} is {record.state}; only a live one can be updated")
        await (await self.runtime_of(record)).update(container_id, resources.build(linux, []))
        config = pb.ContainerConfig.FromString(record.config)
        config.linux.resources.CopyFrom(linux)
        data = config.SerializeToString()
        await self.records.save_config(container_id, data)
        log.info("container resources updated", container=container_id)

    async def reopen_log(self, container_id: str) -> None:
        """After the kubelet rotated the log file: conmon opens ``log_path`` anew (ctl message 2)."""
        record = await self.get(container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state}; only a running one has a log open")
        ctl = self.bundle(container_id) / "ctl"
        try:
            fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise FailedPrecondition(f"cannot reach conmon of container {container_id}: {exc.strerror}") from None
        try:
            os.write(fd, b"2 0 0\n")
        finally:
            os.close(fd)
        log_path = (
            Path(record.status.log_path) if record.status.log_path else self.bundle(container_id) / "container.log"
        )
        if not await _wait_for(log_path, 5):
            raise FailedPrecondition(f"conmon did not reopen the log of container {container_id} at {log_path}")

    # --- ContainerStats, PodSandboxStats -------------------------------------------------------------------

    async def stats(self, container_id: str) -> pb.ContainerStats:
        record = await self.get(container_id)
        sandbox = await self.sandboxes.get(record.sandbox_id)
        return await self.usage.container(record, pb.PodSandboxConfig.FromString(sandbox.config))

    async def pod_stats(self, sandbox_id: str) -> pb.PodSandboxStats:
        """The pod's own cgroup (its cgroup_parent) and each of its containers."""
        sandbox = await self.sandboxes.get(sandbox_id)
        pod = pb.PodSandboxConfig.FromString(sandbox.config)
        containers = [await self.usage.container(record, pod) for record in await self.all(sandbox_id)]
        return await self.usage.pod(sandbox, pod, containers)

    async def metrics(self) -> list[pb.PodSandboxMetrics]:
        """ListPodSandboxMetrics: every ready pod with its running containers."""
        out = []
        for sandbox in await self.sandboxes.all():
            if sandbox.state == READY:
                pod = pb.PodSandboxConfig.FromString(sandbox.config)
                out.append(await self.usage.pod_metrics(sandbox, pod, await self.all(sandbox.id)))
        return out

    # --- exits ----------------------------------------------------------------------------------------------

    async def monitor(self) -> None:
        """Record every exit conmon reports, for as long as the daemon runs."""
        exits = self.conmon_paths("x").exits_dir
        seen: set[str] = set()
        while True:
            names = set(os.listdir(exits)) if exits.is_dir() else set()
            seen &= names  # forget removed containers
            for name in names - seen:
                try:
                    await self._record_exit(name)
                except NotFound:
                    pass  # a pause container, or removed meanwhile
                except Exception as exc:  # one unreadable exit must not stop the monitor; retried next round
                    log.error("cannot record a container exit", container=name, error=str(exc))
                    continue
                seen.add(name)
            await asyncio.sleep(MONITOR_INTERVAL)

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
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        await self.records.save(record.moved(CONTAINER_EXITED, exit_code=code, finished_at=finished, reason=reason))
        log.info("container exited", container=container_id, exit_code=code, reason=reason)

    async def recover(self) -> None:
        for record in await self.all():
            if record.state == CONTAINER_CREATING:
                sandbox = await self.sandboxes.get(record.sandbox_id)
                log.warning("removing a container a crash interrupted while it was made", container=record.id)
                await self._undo(record.id, sandbox.status.runtime_handler)
            else:
                await self._record_exit(record.id)

    # --- records --------------------------------------------------------------------------------------------

    @property
    def index(self) -> Index[ContainerRecord]:
        return self.records.index

    async def get(self, container_id: str) -> ContainerRecord:
        return await self.records.get(container_id)

    async def all(self, sandbox_id: str = "") -> list[ContainerRecord]:
        return self.records.all(sandbox_id)

    async def runtime_of(self, record: ContainerRecord) -> OciRuntime:
        sandbox = await self.sandboxes.get(record.sandbox_id)
        return self.runtime(sandbox.status.runtime_handler)


def _parse_signal(name: str) -> signal.Signals:
    """An image's STOPSIGNAL (``SIGQUIT``, ``QUIT``, ``3``) → the signal; SIGTERM when unset or unknown."""
    text = name.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text))
        except ValueError:
            return signal.SIGTERM
    text = text if text.startswith("SIG") else f"SIG{text}"
    return getattr(signal.Signals, text, signal.SIGTERM)


async def _signal(runtime: OciRuntime, container_id: str, sig: signal.Signals) -> None:
    try:
        await runtime.kill(container_id, int(sig))
    except NotFound:
        pass
    except Exception as exc:  # already stopped: the runtime refuses to signal it; the exit file tells
        log.debug("signal not delivered", container=container_id, signal=sig.name, error=str(exc))


async def _wait_for(path: Path, seconds: float) -> bool:
    """Poll for ``path``: every 5 ms at first (a killed process is usually reaped and its exit file written
    within a few ms), backing off to every 50 ms."""
    deadline = time.monotonic() + seconds
    interval = 0.005
    while time.monotonic() < deadline:
        if path.exists():
            return True
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.05)
    return path.exists()


def _own_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0
