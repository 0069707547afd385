"""CRI ContainerStats and PodSandboxStats messages from the host's cgroups and the containers' writable layers.

Where a container's and a pod's cgroups are is the cgroup driver's business (:mod:`moorage.node.cgroups`); a
pod's cgroup (its ``cgroup_parent``) aggregates all its containers (and its pause process) on cgroup v1 and v2
alike. A pod without a cgroup_parent shares the default parent with other pods, so its own cpu, memory and
process usage are left unset. Network usage is left unset until pods get CNI networking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from moorage.api.cri import pb
from moorage.node.cgroupinfo import CgroupHost
from moorage.node.cgroups import CgroupDriver, leaf_dir
from moorage.observe.stats import CgroupStats, CpuRates, DiskUsage, disk_usage, read_cgroup
from moorage.state.models import ContainerRecord, SandboxRecord


class UsageReader:
    def __init__(self, layer_dir: Callable[[str], Path], cgroups: CgroupDriver, host: CgroupHost) -> None:
        self._layer_dir = layer_dir
        self._cgroups = cgroups
        self._host = host
        self._rates = CpuRates()

    def forget(self, key: str) -> None:
        """Drop the previous cpu sample of a removed container or pod."""
        self._rates.forget(key)

    async def container(self, record: ContainerRecord, pod: pb.PodSandboxConfig) -> pb.ContainerStats:
        upper = self._layer_dir(record.id) / "upper"
        cgroup, disk = await asyncio.to_thread(
            self._sample, self._cgroups.container_dir(pod.linux.cgroup_parent, record.id), upper
        )
        config = pb.ContainerConfig.FromString(record.config)
        return pb.ContainerStats(
            attributes=pb.ContainerAttributes(
                id=record.id, metadata=config.metadata, labels=config.labels, annotations=config.annotations
            ),
            cpu=self._cpu(record.id, cgroup),
            memory=_memory(cgroup),
            writable_layer=_filesystem(disk, self._layer_dir(record.id).parent),
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
        return pb.PodSandboxStats(
            attributes=pb.PodSandboxAttributes(
                id=sandbox.id, metadata=pod.metadata, labels=pod.labels, annotations=pod.annotations
            ),
            linux=linux,
        )

    def _sample(self, cgroup: str, upper: Path) -> tuple[CgroupStats, DiskUsage]:
        hierarchy = self._host.v2_mount if self._host.unified else self._host.v1_controllers.get("memory")
        if hierarchy is not None:
            cgroup = leaf_dir(cgroup, Path(hierarchy))
        return read_cgroup(cgroup, self._host), disk_usage(upper)

    def _cpu(self, key: str, cgroup: CgroupStats) -> pb.CpuUsage | None:
        if cgroup.cpu_usage_ns is None:
            return None
        return pb.CpuUsage(
            timestamp=cgroup.timestamp,
            usage_core_nano_seconds=_u64(cgroup.cpu_usage_ns),
            usage_nano_cores=_u64(self._rates.rate(key, cgroup.timestamp, cgroup.cpu_usage_ns)),
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
    )


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
