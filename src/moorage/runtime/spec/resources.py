"""linux.resources from the CRI LinuxContainerResources (0 / empty means unset, as in the proto), and back: what a
container's spec applied, as ContainerStatus.resources reports it (containerd's copyResourcesToStatus).

Lifecycle::

    spec["linux"]["resources"] = build(config.linux.resources, device_rules)   # CreateContainer
    status.resources = to_record(applied(spec))                                # kept with the container
    new = merge(from_record(status.resources), update)                         # UpdateContainerResources
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format

from moorage.cri import pb
from moorage.errors import InvalidArgument

MIN_MEMORY = 12 << 20  # CRI-O's minimum container memory limit: below it runc's own start can be OOM killed
CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")  # the kernel's cpuset list format: 0-3,5


def check(r: pb.LinuxContainerResources, field: str) -> None:
    """Values the OCI runtime or the kernel cannot take are INVALID_ARGUMENT naming the field, before anything is
    made: the OCI spec's shares and period are unsigned, and cpusets are lists of CPU or node numbers."""
    for name in ("cpu_shares", "cpu_period"):
        if getattr(r, name) < 0:
            raise InvalidArgument(f"{field}.{name}: {getattr(r, name)} is negative")
    if 0 < r.memory_limit_in_bytes < MIN_MEMORY:
        raise InvalidArgument(
            f"{field}.memory_limit_in_bytes: {r.memory_limit_in_bytes} is below the minimum of {MIN_MEMORY} (12 MiB)"
        )
    for name in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(r, name)
        if value and not CPU_LIST.match(value):
            raise InvalidArgument(f"{field}.{name}: {value!r} is not a list of numbers and ranges such as 0-3,5")


def cpu(r: pb.LinuxContainerResources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.cpu_shares:
        out["shares"] = int(r.cpu_shares)
    if r.cpu_quota:
        out["quota"] = int(r.cpu_quota)
    if r.cpu_period:
        out["period"] = int(r.cpu_period)
    if r.cpuset_cpus:
        out["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        out["mems"] = r.cpuset_mems
    return out


def memory(r: pb.LinuxContainerResources) -> dict[str, Any]:
    """limit and swap (memory+swap). Swap is only set when the kubelet asks: it sends memory_swap_limit_in_bytes
    equal to the limit for NoSwap, so guessing here would fail on nodes without swap accounting."""
    out: dict[str, Any] = {}
    if r.memory_limit_in_bytes:
        out["limit"] = int(r.memory_limit_in_bytes)
    if r.memory_swap_limit_in_bytes:
        out["swap"] = int(r.memory_swap_limit_in_bytes)
    return out


def build(
    r: pb.LinuxContainerResources, device_rules: Sequence[dict[str, Any]], hugetlb: bool = True
) -> dict[str, Any]:
    """``hugetlb``: the node has the hugetlb controller. Without it hugepage limits are left out, as containerd's
    tolerate_missing_hugetlb_controller (on by default) does: the kubelet sends a limit for every page size the
    machine has, and runc refuses a container whose limits it cannot set."""
    out: dict[str, Any] = {"devices": [dict(rule) for rule in device_rules]}
    if c := cpu(r):
        out["cpu"] = c
    if m := memory(r):
        out["memory"] = m
    if r.hugepage_limits and hugetlb:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": int(h.limit)} for h in r.hugepage_limits]
    if r.unified:
        out["unified"] = dict(r.unified)
    return out


def applied(spec: Mapping[str, Any]) -> pb.LinuxContainerResources:
    """The CRI form of the resources an OCI spec applies (its linux.resources and process.oomScoreAdj)."""
    r = spec.get("linux", {}).get("resources", {})
    c, m = r.get("cpu", {}), r.get("memory", {})
    return pb.LinuxContainerResources(
        cpu_period=c.get("period", 0),
        cpu_quota=c.get("quota", 0),
        cpu_shares=c.get("shares", 0),
        cpuset_cpus=c.get("cpus", ""),
        cpuset_mems=c.get("mems", ""),
        memory_limit_in_bytes=m.get("limit", 0),
        memory_swap_limit_in_bytes=m.get("swap", 0),
        oom_score_adj=spec.get("process", {}).get("oomScoreAdj", 0),
        hugepage_limits=[
            pb.HugepageLimit(page_size=h["pageSize"], limit=h["limit"]) for h in r.get("hugepageLimits", [])
        ],
        unified=r.get("unified", {}),
    )


def merge(current: pb.LinuxContainerResources, update: pb.LinuxContainerResources) -> pb.LinuxContainerResources:
    """What a container has after UpdateContainerResources: the runtime changes only what the update sets (a
    non-zero value, a page size, a unified key), and never oom_score_adj, so the rest stays as it was."""
    merged = pb.LinuxContainerResources()
    merged.CopyFrom(current)
    for name in ("cpu_period", "cpu_quota", "cpu_shares", "memory_limit_in_bytes", "memory_swap_limit_in_bytes",
                 "cpuset_cpus", "cpuset_mems"):  # fmt: skip
        if value := getattr(update, name):
            setattr(merged, name, value)
    pages = {h.page_size: h.limit for h in current.hugepage_limits} | {
        h.page_size: h.limit for h in update.hugepage_limits
    }
    del merged.hugepage_limits[:]
    merged.hugepage_limits.extend(pb.HugepageLimit(page_size=size, limit=limit) for size, limit in pages.items())
    merged.unified.update(update.unified)
    return merged


def to_record(r: pb.LinuxContainerResources) -> dict[str, Any]:
    """The JSON form kept in the container's record."""
    return json_format.MessageToDict(r, preserving_proto_field_name=True)


def from_record(doc: Mapping[str, Any]) -> pb.LinuxContainerResources:
    return json_format.ParseDict(dict(doc), pb.LinuxContainerResources())
