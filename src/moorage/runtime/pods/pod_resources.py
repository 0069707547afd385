"""UpdatePodSandboxResources: a pod's new resources after an in-place resize, applied to its own cgroup.

The kubelet resizes a pod by writing the pod cgroup itself, then calling this RPC with the pod's overhead and
the sum of its containers' resources, then UpdateContainerResources for each container (growing the pod before
its containers, shrinking it after). containerd and CRI-O only hand the call on to NRI plugins; Moorage, which
has no NRI, applies the pod-level limits too, the way the kubelet computes them (overhead + containers: memory
and cpu quota unlimited when the sum has none, shares at least 2), so a pod resized by any client — crictl, a
test, a kubelet that failed halfway — ends with the limits it was told. Writing what the kubelet has just
written changes nothing.

Only a pod's own cgroup is written: a pod without a cgroup_parent (in moorage's default cgroup) or whose parent
another pod shares is refused (FAILED_PRECONDITION), since the limits would bind the other pods too. A memory
limit lowered to or below what the pod uses now is refused (FAILED_PRECONDITION with both figures), as the
kubelet refuses such a resize rather than let the kernel reclaim or OOM-kill. The request is kept with the pod
(``resources`` in verbose PodSandboxStatus) and survives a daemon restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from google.protobuf import json_format

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument
from moorage.node import cgroup_limits
from moorage.node.cgroupinfo import CgroupHost
from moorage.node.cgroups import CgroupDriver
from moorage.runtime.pods.sandboxes import Sandboxes
from moorage.state.models import READY

log = structlog.get_logger(__name__)


def pod_limits(overhead: pb.LinuxContainerResources, total: pb.LinuxContainerResources) -> cgroup_limits.PodLimits:
    """The pod cgroup's limits for its overhead plus its containers' sum."""
    return cgroup_limits.PodLimits(
        memory=total.memory_limit_in_bytes + overhead.memory_limit_in_bytes if total.memory_limit_in_bytes else 0,
        cpu_quota=total.cpu_quota + max(overhead.cpu_quota, 0) if total.cpu_quota > 0 else -1,  # <= 0: none
        cpu_period=total.cpu_period or overhead.cpu_period or cgroup_limits.DEFAULT_CPU_PERIOD,
        cpu_shares=min(
            max(total.cpu_shares + overhead.cpu_shares, cgroup_limits.MIN_CPU_SHARES), cgroup_limits.MAX_CPU_SHARES
        ),
    )


def check(r: pb.LinuxContainerResources, field: str) -> None:
    """Values no cgroup can take are INVALID_ARGUMENT naming the field: negative shares, period or memory. A
    negative cpu quota is no limit (kubelets before 1.35 sent -1 minus the overhead's quota for such a pod). No
    minimum memory here, unlike a container's: an overhead is a small addition, not a limit of its own."""
    for name in ("cpu_shares", "cpu_period", "memory_limit_in_bytes"):
        if getattr(r, name) < 0:
            raise InvalidArgument(f"{field}.{name}: {getattr(r, name)} is negative")


async def update(
    sandboxes: Sandboxes,
    cgroups: CgroupDriver,
    host: CgroupHost,
    *,
    sandbox_id: str,
    overhead: pb.LinuxContainerResources,
    total: pb.LinuxContainerResources,
) -> None:
    check(overhead, "overhead")
    check(total, "resources")
    record = await sandboxes.get(sandbox_id)
    if record.state != READY:
        raise FailedPrecondition(f"pod sandbox {sandbox_id} is {record.state}; only a ready pod can be resized")
    parent = pb.PodSandboxConfig.FromString(record.config).linux.cgroup_parent
    path = cgroups.pod_dir(parent)
    if path is None:
        raise FailedPrecondition(
            f"pod sandbox {sandbox_id} has no cgroup_parent: it shares moorage's default cgroup, which is not its own"
        )
    sharing = [
        other.id
        for other in sandboxes.index.all(lambda r: r.id != sandbox_id)
        if pb.PodSandboxConfig.FromString(other.config).linux.cgroup_parent == parent
    ]
    if sharing:
        raise FailedPrecondition(
            f"pod sandbox {sandbox_id}: its cgroup_parent {parent} is shared with pod sandbox {sharing[0]}: "
            "a pod's limits go only on a cgroup of its own"
        )
    limits = pod_limits(overhead, total)
    current = await asyncio.to_thread(cgroup_limits.memory_limit, host, path)
    if limits.memory and (current is None or limits.memory < current):  # a decrease: the kubelet checks those
        usage = await asyncio.to_thread(cgroup_limits.memory_usage, host, path)
        if usage is not None and usage >= limits.memory:
            raise FailedPrecondition(
                f"pod sandbox {sandbox_id}: memory limit {limits.memory} is not above the pod's usage of {usage} bytes"
            )
    await asyncio.to_thread(cgroup_limits.apply, host, path, limits)
    await sandboxes.keep_resources(sandbox_id, {"overhead": _doc(overhead), "resources": _doc(total)})
    log.info("pod sandbox resources updated", sandbox=sandbox_id, cgroup=path, limits=limits.__dict__)


def _doc(r: pb.LinuxContainerResources) -> dict[str, Any]:
    return json_format.MessageToDict(r, preserving_proto_field_name=True)
