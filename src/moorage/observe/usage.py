"""CRI ContainerStats and PodSandboxStats messages from the host's cgroups and the containers' writable layers.

Where a container's and a pod's cgroups are is the cgroup driver's business (:mod:`moorage.node.cgroups`); a
pod's cgroup (its ``cgroup_parent``) aggregates all its containers (and its pause process) on cgroup v1 and v2
alike. A pod without a cgroup_parent shares the default parent with other pods, so its own cpu, memory and
process usage are left unset. Network usage is read from the interfaces of the pod's own net namespace (none for
a hostNetwork pod).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from moorage.cri import pb
from moorage.node.cgroupinfo import CgroupHost
from moorage.node.cgroups import CgroupDriver, leaf_dir
from moorage.node.netdev import DEFAULT_INTERFACE, InterfaceCounters, read_counters
from moorage.node.procstats import count_processes, open_files_soft_limit
from moorage.observe import pod_metrics
from moorage.observe.cgroup_spec import read_spec
from moorage.observe.disk import DiskUsage, disk_usage, filesystem_of
from moorage.observe.pod_metrics import ContainerReading
from moorage.observe.stats import CgroupStats, CpuRates, Pressure, PsiLine, read_cgroup
from moorage.state.models import CONTAINER_RUNNING, ContainerRecord, SandboxRecord


class UsageReader:
    def __init__(self, layer_dir: Callable[[str], Path], cgroups: CgroupDriver, host: CgroupHost) -> None:
        self._layer_dir = layer_dir
        self._cgroups = cgroups
        self._host = host
        self._rates = CpuRates()
        self._disk: dict[str, DiskUsage] = {}

    def forget(self, key: str) -> None:
        """Drop what is kept of a removed container or pod: its previous cpu sample, its last disk walk."""
        self._rates.forget(key)
        self._disk.pop(key, None)

    async def sync_disk(self, containers: Callable[[], list[ContainerRecord]], period: float) -> None:
        """Walk every container's writable layer each ``period`` seconds, for as long as the daemon runs: the
        walk reads every file's metadata, too slow to repeat on each stats call of a busy node."""
        while True:
            await asyncio.sleep(period)
            records = containers()
            for gone in self._disk.keys() - {r.id for r in records}:
                del self._disk[gone]  # removed meanwhile: its walk must not linger
            for record in records:
                await self._walk(record.id)

    async def _walk(self, container_id: str) -> DiskUsage:
        usage = await asyncio.to_thread(disk_usage, self._layer_dir(container_id) / "upper")
        self._disk[container_id] = usage
        return usage

    async def container(self, record: ContainerRecord, pod: pb.PodSandboxConfig) -> pb.ContainerStats:
        cgroup = await asyncio.to_thread(self._read, self._cgroups.container_dir(pod.linux.cgroup_parent, record.id))
        disk = self._disk.get(record.id) or await self._walk(record.id)
        config = pb.ContainerConfig.FromString(record.config)
        return pb.ContainerStats(
            attributes=pb.ContainerAttributes(
                id=record.id, metadata=config.metadata, labels=config.labels, annotations=config.annotations
            ),
            cpu=self._cpu(record.id, cgroup),
            memory=_memory(cgroup),
            writable_layer=_filesystem(disk, self._layer_dir(record.id).parent),
            swap=_swap(cgroup),
            io=_io(cgroup),
        )

    async def pod(
        self, sandbox: SandboxRecord, pod: pb.PodSandboxConfig, containers: list[pb.ContainerStats]
    ) -> pb.PodSandboxStats:
        linux = pb.LinuxPodSandboxStats(containers=containers)
        pod_dir = self._cgroups.pod_dir(pod.linux.cgroup_parent)
        if pod_dir is not None:
            cgroup = await asyncio.to_thread(read_cgroup, pod_dir, self._host)
            cpu, memory = self._cpu(f"pod:{sandbox.id}", cgroup), _memory(cgroup)
            if cpu is not None:
                linux.cpu.CopyFrom(cpu)
            if memory is not None:
                linux.memory.CopyFrom(memory)
            if cgroup.pids is not None:
                linux.process.CopyFrom(pb.ProcessUsage(timestamp=cgroup.timestamp, process_count=_u64(cgroup.pids)))
            io = _io(cgroup)
            if io is not None:
                linux.io.CopyFrom(io)
        network = _network(await self._interfaces(sandbox))
        if network is not None:
            linux.network.CopyFrom(network)
        return pb.PodSandboxStats(
            attributes=pb.PodSandboxAttributes(
                id=sandbox.id, metadata=pod.metadata, labels=pod.labels, annotations=pod.annotations
            ),
            linux=linux,
        )

    async def pod_metrics(
        self, sandbox: SandboxRecord, pod: pb.PodSandboxConfig, records: list[ContainerRecord]
    ) -> pb.PodSandboxMetrics:
        """The pod's network samples and its running containers' samples (see :mod:`pod_metrics`)."""
        meta = pod.metadata
        containers = []
        for record in records:
            if record.state != CONTAINER_RUNNING:
                continue  # its cgroup is gone or not made yet
            name = pb.ContainerConfig.FromString(record.config).metadata.name
            labels = (meta.name, meta.namespace, name, record.id, record.status.image)
            disk = self._disk.get(record.id) or await self._walk(record.id)
            reading = await asyncio.to_thread(self._reading, record, pod.linux.cgroup_parent, disk)
            samples = pod_metrics.container_metrics(labels, reading)
            containers.append(pb.ContainerMetrics(container_id=record.id, metrics=samples))
        interfaces = await self._interfaces(sandbox)
        return pb.PodSandboxMetrics(
            pod_sandbox_id=sandbox.id,
            metrics=pod_metrics.network_metrics((meta.name, meta.namespace, "", sandbox.id, ""), interfaces),
            container_metrics=containers,
        )

    def _reading(self, record: ContainerRecord, cgroup_parent: str, disk: DiskUsage) -> ContainerReading:
        """One container's cgroup, limits, processes and writable layer (blocking reads: run in a thread)."""
        cgroup_dir = self._leaf(self._cgroups.container_dir(cgroup_parent, record.id))
        cgroup = read_cgroup(cgroup_dir, self._host)
        return ContainerReading(
            cgroup=cgroup,
            seen_at_ns=time.time_ns(),
            started_at_ns=record.status.started_at,
            created_at_ns=record.created_at,
            spec=read_spec(cgroup_dir, self._host),
            processes=count_processes(cgroup.procs) if cgroup.procs is not None else None,
            open_files_soft_limit=open_files_soft_limit(record.status.pid) if record.status.pid else None,
            layer=disk,
            filesystem=filesystem_of(self._layer_dir(record.id)),
        )

    async def _interfaces(self, sandbox: SandboxRecord) -> list[InterfaceCounters]:
        """The pod's own net namespace's interfaces; none for a hostNetwork pod or one whose namespace is gone."""
        netns = sandbox.status.namespaces.get("network")
        if not netns:
            return []
        try:
            return await asyncio.to_thread(read_counters, Path(netns))
        except (OSError, RuntimeError):
            return []

    def _read(self, cgroup: str) -> CgroupStats:
        return read_cgroup(self._leaf(cgroup), self._host)

    def _leaf(self, cgroup: str) -> str:
        hierarchy = self._host.v2_mount if self._host.unified else self._host.v1_controllers.get("memory")
        return cgroup if hierarchy is None else leaf_dir(cgroup, Path(hierarchy))

    def _cpu(self, key: str, cgroup: CgroupStats) -> pb.CpuUsage | None:
        if cgroup.cpu_usage_ns is None:
            return None
        return pb.CpuUsage(
            timestamp=cgroup.timestamp,
            usage_core_nano_seconds=_u64(cgroup.cpu_usage_ns),
            usage_nano_cores=_u64(self._rates.rate(key, cgroup.timestamp, cgroup.cpu_usage_ns)),
            psi=_psi(cgroup.pressure.get("cpu")),
        )


def _memory(cgroup: CgroupStats) -> pb.MemoryUsage | None:
    if cgroup.memory_usage is None:
        return None
    return pb.MemoryUsage(
        timestamp=cgroup.timestamp,
        working_set_bytes=_u64(cgroup.working_set),
        available_bytes=_u64(cgroup.available),
        usage_bytes=_u64(cgroup.memory_usage),
        rss_bytes=_u64(cgroup.rss),
        page_faults=_u64(cgroup.page_faults),
        major_page_faults=_u64(cgroup.major_page_faults),
        psi=_psi(cgroup.pressure.get("memory")),
    )


def _network(interfaces: list[InterfaceCounters]) -> pb.NetworkUsage | None:
    """eth0 (what CNI plugins name the pod's side) as the default interface, the others after it."""
    if not interfaces:
        return None

    def usage(i: InterfaceCounters) -> pb.NetworkInterfaceUsage:
        return pb.NetworkInterfaceUsage(
            name=i.name,
            rx_bytes=_u64(i.rx_bytes),
            rx_errors=_u64(i.rx_errors),
            tx_bytes=_u64(i.tx_bytes),
            tx_errors=_u64(i.tx_errors),
        )

    default = next((i for i in interfaces if i.name == DEFAULT_INTERFACE), None)
    return pb.NetworkUsage(
        timestamp=time.time_ns(),
        default_interface=usage(default) if default is not None else None,
        interfaces=[usage(i) for i in interfaces if i is not default],
    )


def _swap(cgroup: CgroupStats) -> pb.SwapUsage | None:
    if cgroup.swap_usage is None:
        return None
    available = None if cgroup.swap_limit is None else max(cgroup.swap_limit - cgroup.swap_usage, 0)
    return pb.SwapUsage(
        timestamp=cgroup.timestamp, swap_usage_bytes=_u64(cgroup.swap_usage), swap_available_bytes=_u64(available)
    )


def _io(cgroup: CgroupStats) -> pb.IoUsage | None:
    """The CRI's block I/O usage is its pressure (the byte counts go to ListPodSandboxMetrics)."""
    pressure = cgroup.pressure.get("io")
    return None if pressure is None else pb.IoUsage(timestamp=cgroup.timestamp, psi=_psi(pressure))


def _psi(pressure: Pressure | None) -> pb.PsiStats | None:
    """A PSI file as the CRI carries it: total stall time in nanoseconds, the averages in percent."""
    if pressure is None:
        return None

    def data(line: PsiLine | None) -> pb.PsiData | None:
        if line is None:
            return None
        return pb.PsiData(Total=line.total_us * 1000, Avg10=line.avg10, Avg60=line.avg60, Avg300=line.avg300)

    return pb.PsiStats(Some=data(pressure.some), Full=data(pressure.full))


def _filesystem(disk: DiskUsage, layers: Path) -> pb.FilesystemUsage:
    """The filesystem is named by the directory of all writable layers, where the kubelet finds its device."""
    return pb.FilesystemUsage(
        timestamp=disk.timestamp,
        fs_id=pb.FilesystemIdentifier(mountpoint=str(layers)),
        used_bytes=_u64(disk.used_bytes),
        inodes_used=_u64(disk.inodes),
    )


def _u64(value: int | None) -> pb.UInt64Value | None:
    """Unset (not zero) when unknown, as api.proto asks of every UInt64Value."""
    return None if value is None else pb.UInt64Value(value=value)
