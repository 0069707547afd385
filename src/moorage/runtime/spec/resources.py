"""linux.resources from the CRI LinuxContainerResources (0 / empty means unset, as in the proto)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moorage.api.cri import pb


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


def build(r: pb.LinuxContainerResources, device_rules: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": [dict(rule) for rule in device_rules]}
    if c := cpu(r):
        out["cpu"] = c
    if m := memory(r):
        out["memory"] = m
    if r.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": int(h.limit)} for h in r.hugepage_limits]
    if r.unified:
        out["unified"] = dict(r.unified)
    return out
