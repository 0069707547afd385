"""Pod sandboxes: Run, Stop, Remove, Status and List, and their recovery after a crash. The one owner of a pod's
lifecycle: stopping or removing a pod stops or removes its containers first, and its pause container.

A pod is made without any process of its own (infra-less, as CRI-O's pinns does it): its network, IPC and
UTS namespaces are created and pinned with bind mounts, its hostname and namespaced sysctls are set inside
them, and its /etc/hostname, /etc/hosts, /etc/resolv.conf and /dev/shm are written under
``<state>/pods/<id>`` (with, for a privileged pod, the read-write sysfs of its net namespace). hostNetwork
and hostIPC pods use the node's namespaces. A pod with a user namespace (:mod:`moorage.runtime.userns`) gets it pinned
too, owning the others, and its files are owned by its root's host ids. A pod sharing one PID namespace between
its containers needs a process to hold it: the pause container, run by :class:`~moorage.runtime.containers.Containers`.

Persist first: the pod is stored as CREATING before anything is made and moves to READY once all of it
exists. A failure undoes what was made and removes the record; a crash leaves a CREATING record that
:meth:`Sandboxes.recover` undoes at the next start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from moorage.config import Config
from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument, MoorageError
from moorage.node import leftovers, namespaces, podfiles, sysctls
from moorage.runtime import userns
from moorage.runtime.containers import Containers
from moorage.runtime.pods.network import CheckResult, PodNetwork, uses_cni
from moorage.runtime.spec import user
from moorage.state.index import Index
from moorage.state.models import CREATING, NOTREADY, READY, SandboxRecord, SandboxStatus, pod_name
from moorage.store.records import Records

log = structlog.get_logger(__name__)

NODE_HOSTS = Path("/etc/hosts")
NODE_RESOLV = Path("/etc/resolv.conf")
OCI_KIND = {"net": "network", "ipc": "ipc", "uts": "uts", "user": "user"}


class Sandboxes:
    """Every pod of the node, with its containers: the one owner of a pod's lifecycle."""

    def __init__(
        self,
        records: Records[SandboxRecord],
        config: Callable[[], Config],
        network: PodNetwork,
        containers: Containers,
    ) -> None:
        self.records = records
        self.config = config
        self.network = network
        self.containers = containers
        """The pod's containers, and its pause container where it has one."""
        self.node_hosts = NODE_HOSTS
        self.node_resolv = NODE_RESOLV

    @property
    def index(self) -> Index[SandboxRecord]:
        return self.records.index

    async def load(self) -> None:
        """Fill the in-memory index from the store (start-up, before anything is served or recovered)."""
        await self.records.load()

    def pod_dir(self, sandbox_id: str) -> Path:
        return Path(self.config().state) / "pods" / sandbox_id

    # --- Run ------------------------------------------------------------------------------------------------

    async def run(self, pod: pb.PodSandboxConfig, runtime_handler: str) -> str:
        handler = runtime_handler or self.config().runtime.default_handler
        if handler not in self.config().runtime.handlers:
            known = ", ".join(sorted(self.config().runtime.handlers))
            raise InvalidArgument(f"runtime_handler {handler!r} is not configured (runtime.handlers has {known})")
        user.require_user_for_group(pod.linux.security_context, "config.linux.security_context")
        modes = pod.linux.security_context.namespace_options
        sysctls.check_sysctls(pod.linux.sysctls, _shared_with_node(modes))
        maps = userns.validate(pod)
        if maps is not None and (reason := await userns.support(Path(self.config().root))):
            raise FailedPrecondition(f"{userns.FIELD}: this node cannot run pods in user namespaces: {reason}")
        meta = pod.metadata
        record = SandboxRecord(
            id=secrets.token_hex(32),
            name=pod_name(meta.name, meta.namespace, meta.uid, meta.attempt),
            state=CREATING,
            created_at=time.time_ns(),
            config=pod.SerializeToString(),
            status=SandboxStatus(runtime_handler=handler, pid_mode=pb.NamespaceMode.Name(modes.pid)),
        )
        with userns.claim(maps, self.records.all()):  # no other pod on its host ids
            await self.records.insert(record)
        try:
            status = await asyncio.to_thread(self._make, record, pod)
            if uses_cni(pod):
                made = dataclasses.replace(record, status=status)
                await self.records.save(made)  # the namespace is known before CNI runs: a crash now still undoes ADD
                ips = await self.network.attach(record.id, status.namespaces["network"], pod)
                status = dataclasses.replace(status, ips=ips)
            if modes.pid == pb.NamespaceMode.POD:
                made = dataclasses.replace(record, status=status)
                status = dataclasses.replace(status, infra_pid=await self.containers.start_infra(made, pod))
            await self.records.save(record.moved(READY, **status.__dict__))
        except BaseException:
            await asyncio.shield(self._undo(record.id))
            raise
        log.info("pod sandbox ready", sandbox=record.id, pod=record.name, handler=handler)
        return record.id

    def _make(self, record: SandboxRecord, pod: pb.PodSandboxConfig) -> SandboxStatus:
        """Everything a pod has on the node (synchronous: mounts and short subprocesses)."""
        modes = pod.linux.security_context.namespace_options
        host_network = modes.network == pb.NamespaceMode.NODE
        host_ipc = modes.ipc == pb.NamespaceMode.NODE
        kinds: set[sysctls.Kind] = set()
        if not host_network:
            kinds |= {"net", "uts"}  # a pod on the node's network keeps the node's hostname too
        if not host_ipc:
            kinds.add("ipc")
        # No hostname: the node's, as containerd and CRI-O give it (the pod's name may be longer than 64 bytes).
        hostname = pod.hostname or os.uname().nodename
        directory = self.pod_dir(record.id)
        directory.mkdir(parents=True, mode=0o711)
        maps = userns.validate(pod)
        if maps is not None:
            userns.check_reachable(directory)
            userns.private_to_pod(directory, maps)
        pinned = (
            namespaces.pin(
                kinds,
                directory / "ns",
                hostname=hostname if "uts" in kinds else None,
                sysctls=dict(pod.linux.sysctls),
                userns=maps,
            )
            if kinds
            else {}
        )
        if pod.linux.security_context.privileged and "net" in pinned:
            podfiles.mount_sysfs(directory, pinned["net"])  # so its privileged containers' /sys can be read-write
        dns = pod.dns_config
        files = {
            "/etc/hostname": podfiles.write_hostname(directory, hostname),
            "/etc/hosts": podfiles.write_hosts(
                directory, hostname, node_hosts=self.node_hosts if host_network else None
            ),
            "/etc/resolv.conf": podfiles.write_resolv_conf(
                directory, list(dns.servers), list(dns.searches), list(dns.options), self.node_resolv
            ),
            "/dev/shm": Path("/dev/shm") if host_ipc else podfiles.mount_shm(directory),
        }
        if maps is not None:  # the pod's root owns its files, as without a user namespace (CRI-O chowns them too)
            podfiles.chown(list(files.values()), maps.host_uid(0), maps.host_gid(0))
        return dataclasses.replace(
            record.status,
            namespaces={OCI_KIND[k]: str(p) for k, p in pinned.items()},
            files={k: str(v) for k, v in files.items()},
        )

    # --- Stop and Remove ------------------------------------------------------------------------------------

    async def stop(self, sandbox_id: str) -> None:
        """Stop the pod's containers (no grace period: the kubelet stopped them gracefully before) and release
        what a stopped pod no longer needs; stopping again is a no-op (api.proto)."""
        record = await self.get(sandbox_id)
        for container in self.containers.all(sandbox_id):
            await self.containers.stop(container.id, 0)
        if record.state == NOTREADY and record.status.stopped_at:
            return
        if record.status.infra_pid:
            await self.containers.stop_infra(record)
        pod = pb.PodSandboxConfig.FromString(record.config)
        if uses_cni(pod):
            await self.network.detach(sandbox_id, record.status.namespaces.get("network", ""), pod)
        await asyncio.to_thread(podfiles.unmount, self.pod_dir(sandbox_id) / "shm")
        await asyncio.to_thread(podfiles.unmount, self.pod_dir(sandbox_id) / "sys")
        await self.records.save(record.moved(NOTREADY, stopped_at=time.time_ns()))
        log.info("pod sandbox stopped", sandbox=sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        """Remove the pod's containers (running ones are killed, as api.proto asks), then the pod."""
        for container in self.containers.all(sandbox_id):
            await self.containers.remove(container.id)
        await self._undo(sandbox_id, check=True)
        log.info("pod sandbox removed", sandbox=sandbox_id)

    async def _undo(self, sandbox_id: str, check: bool = False) -> None:
        """Take down whatever of the pod exists, then forget it. Safe on a half-made or half-removed pod.

        A failing CNI DEL stops a RemovePodSandbox (``check``: the kubelet retries it, and the IP is not leaked);
        undoing a failed or crashed RunPodSandbox logs it and goes on."""
        record = self.index.get(sandbox_id)
        if record is not None and _has_infra(record):
            await self.containers.remove_infra(record)
        if record is not None and record.state != NOTREADY:  # a stopped pod was detached (or is left to GC)
            pod = pb.PodSandboxConfig.FromString(record.config)
            if uses_cni(pod):
                try:
                    await self.network.detach(sandbox_id, record.status.namespaces.get("network", ""), pod)
                except MoorageError as exc:
                    if check:
                        raise
                    log.warning("cni teardown of an undone pod failed", sandbox=sandbox_id, error=exc.message)
        directory = self.pod_dir(sandbox_id)
        ns_dir = directory / "ns"
        if ns_dir.exists():
            await asyncio.to_thread(namespaces.unpin, list(ns_dir.iterdir()))
        await asyncio.to_thread(podfiles.remove, directory)
        await self.records.delete(sandbox_id)

    async def recover(self) -> None:
        """At start-up: undo pods a crash caught half-made; mark pods whose namespaces are gone (a reboot);
        release CNI attachments of pods that are gone or stopped."""
        await self._recover_records()
        await asyncio.to_thread(self._collect_strays)
        attached = [r.id for r in self.index.all(lambda r: r.state == READY)]
        try:
            await self.network.collect(attached)
        except MoorageError as exc:
            log.warning("cni garbage collection failed", error=exc.message)

    async def _recover_records(self) -> None:
        """CREATING: undone (its pause container too, started or not); READY without its namespaces: NOTREADY;
        READY whose pause container is not running (a StopPodSandbox the crash cut after killing it, or the
        pause died meanwhile): stopped, as StopPodSandbox would have finished it."""
        for record in self.all():
            if record.state == CREATING:
                log.warning("removing a pod sandbox a crash interrupted while it was made", sandbox=record.id)
                await self._undo(record.id)
            elif record.state == READY and not all(
                namespaces.is_pinned(Path(p)) for p in record.status.namespaces.values()
            ):
                log.warning("pod sandbox lost its namespaces (node rebooted?); it is not ready", sandbox=record.id)
                await self.records.save(record.moved(NOTREADY, stopped_at=time.time_ns()))
            elif await self._pause_died(record):
                log.warning("pod sandbox's pause container is not running; stopping the pod", sandbox=record.id)
                await self.stop(record.id)

    def _collect_strays(self) -> None:
        """Pod directories no pod record owns (a failed or interrupted undo's leftovers): their pinned
        namespaces, /dev/shm and sysfs are detached and the directory removed."""
        owned = {r.id for r in self.index.all()}
        for stray in leftovers.strays(Path(self.config().state) / "pods", owned):
            log.warning("removing a pod directory no pod owns", path=str(stray))
            try:
                leftovers.remove_tree(stray)
            except MoorageError as exc:
                log.error("cannot remove a pod directory no pod owns", path=str(stray), error=exc.message)

    async def _pause_died(self, record: SandboxRecord) -> bool:
        if record.state != READY or not record.status.infra_pid:
            return False
        return not await self.containers.infra_running(record)

    async def network_check(self, record: SandboxRecord) -> CheckResult:
        """The last CNI CHECK of a ready pod's attachment (run in the background), for verbose
        PodSandboxStatus: "ok", the plugin's error, or why it is not checked (time 0)."""
        pod = pb.PodSandboxConfig.FromString(record.config)
        if not uses_cni(pod):
            return CheckResult("not checked: the pod uses the node's network", 0)
        if record.state != READY:
            return CheckResult(f"not checked: the pod is {record.state}", 0)
        return await self.network.last_check(record.id, record.status.namespaces.get("network", ""), pod)

    # --- records --------------------------------------------------------------------------------------------

    async def keep_resources(self, sandbox_id: str, resources: dict[str, Any]) -> None:
        """Store the pod's resources of its last in-place resize with it (see :mod:`.pod_resources`): that field
        alone, so a StopPodSandbox saving meanwhile keeps its state (it may drop this field, which only records)."""
        await self.records.patch(
            sandbox_id,
            "status = json_set(status, '$.resources', json(?))",
            (json.dumps(resources, sort_keys=True),),
            lambda r: dataclasses.replace(r, status=dataclasses.replace(r.status, resources=resources)),
        )

    async def get(self, sandbox_id: str) -> SandboxRecord:
        return await self.records.get(sandbox_id)

    def all(self) -> list[SandboxRecord]:
        return self.records.all()


def _shared_with_node(modes: pb.NamespaceOption) -> dict[sysctls.Kind, str]:
    """The namespaces a pod shares with the node, and why: a hostNetwork pod keeps the node's hostname too."""
    shared: dict[sysctls.Kind, str] = {}
    if modes.network == pb.NamespaceMode.NODE:
        shared |= {"net": "hostNetwork", "uts": "hostNetwork"}
    if modes.ipc == pb.NamespaceMode.NODE:
        shared["ipc"] = "hostIPC"
    return shared


def _has_infra(record: SandboxRecord) -> bool:
    """A pause container may exist: it was started, or a pod sharing one PID namespace was cut while made."""
    return bool(record.status.infra_pid) or record.status.pid_mode == "POD"
