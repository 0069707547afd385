"""The limits a cgroup holds, read back from its files as cAdvisor reads a container's spec: what the OCI
runtime wrote for the CRI resources (and UpdateContainerResources changed since), not what was asked.

Each value is None when its controller's file cannot be read; a limit that is not set reads as 0, as cAdvisor
reports it (``max``, -1 and v1's PAGE_COUNTER_MAX alike). The files per layout:

=====================  ====================================  ==========================================
value                  v1 (each controller's hierarchy)      v2 (the unified group)
=====================  ====================================  ==========================================
cpu_period, cpu_quota  cpu.cfs_period_us, cpu.cfs_quota_us   cpu.max (``$QUOTA $PERIOD``)
cpu_shares             cpu.shares                            cpu.weight, mapped back to shares
memory_reservation     memory.soft_limit_in_bytes            memory.min
memory_swap_limit      memory.memsw.limit_in_bytes (+mem)    memory.swap.max (swap alone)
pids_max               pids.max                              pids.max
=====================  ====================================  ==========================================

v2's cpu.weight holds less than shares did: the OCI runtimes map shares [2, 262144] onto weight [1, 10000]
linearly (runc 1.1, crun 1.8), so the shares read back are the inverse of that map, within one weight step
(27 shares) of the ones asked for: 1024 reads back as 998. A memory controller without swap accounting has no
swap limit: 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moorage.node.cgroupinfo import CgroupHost
from moorage.observe.cgroupfiles import read_limit, read_text


@dataclass(frozen=True)
class CgroupSpec:
    cpu_period: int | None = None  # CFS period, microseconds
    cpu_quota: int | None = None  # CFS quota per period, microseconds; 0: none
    cpu_shares: int | None = None
    memory_reservation: int | None = None  # 0: none
    memory_swap_limit: int | None = None  # 0: none
    pids_max: int | None = None  # 0: no limit


def read_spec(path: str, host: CgroupHost) -> CgroupSpec:
    """The limits of the cgroup at ``path`` (relative to each hierarchy) on ``host``'s layout."""
    relative = path.strip("/")
    if host.unified and host.v2_mount is not None:
        return _read_v2(Path(host.v2_mount) / relative)
    return _read_v1({name: Path(point) / relative for name, point in host.v1_controllers.items()})


def _read_v1(groups: dict[str, Path]) -> CgroupSpec:
    cpu, memory, pids = (groups.get(c) for c in ("cpu", "memory", "pids"))
    swap_limit = None
    if memory is not None and read_limit(memory / "memory.limit_in_bytes") is not None:
        swap_limit = read_limit(memory / "memory.memsw.limit_in_bytes") or 0
    return CgroupSpec(
        cpu_period=read_limit(cpu / "cpu.cfs_period_us") if cpu else None,
        cpu_quota=read_limit(cpu / "cpu.cfs_quota_us") if cpu else None,
        cpu_shares=read_limit(cpu / "cpu.shares") if cpu else None,
        memory_reservation=read_limit(memory / "memory.soft_limit_in_bytes") if memory else None,
        memory_swap_limit=swap_limit,
        pids_max=read_limit(pids / "pids.max") if pids else None,
    )


def _read_v2(group: Path) -> CgroupSpec:
    quota, period = _cpu_max(read_text(group / "cpu.max"))
    has_memory = read_limit(group / "memory.max") is not None
    weight = read_limit(group / "cpu.weight")
    return CgroupSpec(
        cpu_period=period,
        cpu_quota=quota,
        cpu_shares=weight_to_shares(weight) if weight else None,
        memory_reservation=read_limit(group / "memory.min"),
        memory_swap_limit=(read_limit(group / "memory.swap.max") or 0) if has_memory else None,
        pids_max=read_limit(group / "pids.max"),
    )


def _cpu_max(text: str | None) -> tuple[int | None, int | None]:
    """cpu.max ``$QUOTA $PERIOD`` as (quota, period), quota 0 for ``max``; (None, None) if it cannot be read."""
    quota, _, period = (text or "").partition(" ")
    if not period.isdigit() or not (quota == "max" or quota.isdigit()):
        return None, None
    return (0 if quota == "max" else int(quota)), int(period)


def weight_to_shares(weight: int) -> int:
    """The inverse of the runtimes' shares→weight map (``1 + (shares - 2) * 9999 // 262142``), as cAdvisor
    inverts it; weights outside [1, 10000] are clamped."""
    return 2 + (min(max(weight, 1), 10000) - 1) * 262142 // 9999
