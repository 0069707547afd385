"""Resource usage of a cgroup and of a directory tree, read from the host (the CRI stats RPCs' source).

Cgroups are read where the host's layout (:mod:`moorage.node.cgroupinfo`, detected once at start) says each
controller is mounted, so tests can point it at a tree of their own. A cgroup that is gone (its container exited
and was cleaned up) reads as all ``None``: stats never fail for a missing file.

``usage_nano_cores`` is a rate and needs two samples; :class:`CpuRates` keeps the previous one per key, as
containerd does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from moorage.node.cgroupinfo import CgroupHost

UNLIMITED = 1 << 62
"""Memory limits at or above this mean no limit (v1 writes PAGE_COUNTER_MAX pages as bytes)."""


@dataclass(frozen=True)
class CgroupStats:
    timestamp: int
    """time.time_ns() when read."""
    cpu_usage_ns: int | None = None
    memory_usage: int | None = None
    working_set: int | None = None
    available: int | None = None
    rss: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    pids: int | None = None


@dataclass(frozen=True)
class DiskUsage:
    timestamp: int
    used_bytes: int
    inodes: int


def read_cgroup(path: str, host: CgroupHost) -> CgroupStats:
    """The usage of the cgroup at ``path`` (``/moorage/<id>``, relative to each hierarchy) on ``host``'s layout:
    the unified tree on v2, each controller's own hierarchy on v1 and hybrid (as the kubelet reads them)."""
    relative = path.strip("/")
    if host.unified and host.v2_mount is not None:
        return _read_v2(Path(host.v2_mount) / relative)
    return _read_v1({name: Path(point) / relative for name, point in host.v1_controllers.items()})


def _read_v1(groups: dict[str, Path]) -> CgroupStats:
    memory, cpuacct, pids = (groups.get(c) for c in ("memory", "cpuacct", "pids"))
    stat = _flat_keyed(memory / "memory.stat") if memory else {}
    usage = _int(memory / "memory.usage_in_bytes") if memory else None
    inactive = stat.get("total_inactive_file", stat.get("inactive_file"))
    working_set = None if usage is None else max(usage - (inactive or 0), 0)
    return CgroupStats(
        timestamp=time.time_ns(),
        cpu_usage_ns=_int(cpuacct / "cpuacct.usage") if cpuacct else None,
        memory_usage=usage,
        working_set=working_set,
        available=_available(_int(memory / "memory.limit_in_bytes") if memory else None, working_set),
        rss=stat.get("total_rss", stat.get("rss")),
        page_faults=stat.get("total_pgfault", stat.get("pgfault")),
        major_page_faults=stat.get("total_pgmajfault", stat.get("pgmajfault")),
        pids=_int(pids / "pids.current") if pids else None,
    )


def _read_v2(group: Path) -> CgroupStats:
    cpu = _flat_keyed(group / "cpu.stat")
    stat = _flat_keyed(group / "memory.stat")
    usage = _int(group / "memory.current")
    working_set = None if usage is None else max(usage - stat.get("inactive_file", 0), 0)
    usec = cpu.get("usage_usec")
    return CgroupStats(
        timestamp=time.time_ns(),
        cpu_usage_ns=None if usec is None else usec * 1000,
        memory_usage=usage,
        working_set=working_set,
        available=_available(_int(group / "memory.max"), working_set),
        rss=stat.get("anon"),
        page_faults=stat.get("pgfault"),
        major_page_faults=stat.get("pgmajfault"),
        pids=_int(group / "pids.current"),
    )


def _available(limit: int | None, working_set: int | None) -> int | None:
    if limit is None or working_set is None or limit >= UNLIMITED:
        return None
    return max(limit - working_set, 0)


def _int(path: Path) -> int | None:
    """A file holding one integer; None if it is missing, unreadable or ``max``."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _flat_keyed(path: Path) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat); empty if the file is gone."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def disk_usage(top: Path) -> DiskUsage:
    """Bytes allocated (st_blocks, each inode once, like ``du``) and inodes used under ``top``; 0 if it is gone."""
    timestamp = time.time_ns()
    seen: set[int] = set()
    used = 0

    def count(path: str) -> None:
        nonlocal used
        try:
            st = os.lstat(path)
        except OSError:
            return
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            used += st.st_blocks * 512

    if top.exists():
        count(str(top))
    for directory, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            count(os.path.join(directory, name))
    return DiskUsage(timestamp, used, len(seen))


class CpuRates:
    """``usage_nano_cores`` from the previous sample of the same key: unset on the first sample, after a counter
    reset, or when no time passed. Samples older than ``MAX_AGE_NS`` are dropped (removed containers)."""

    MAX_AGE_NS = 10 * 60 * 10**9

    def __init__(self) -> None:
        self._previous: dict[str, tuple[int, int]] = {}
        self._pruned_at = 0

    def rate(self, key: str, timestamp: int, usage_ns: int) -> int | None:
        previous = self._previous.get(key)
        self._previous[key] = (timestamp, usage_ns)
        if timestamp - self._pruned_at > self.MAX_AGE_NS:
            self._prune(timestamp)
        if previous is None:
            return None
        elapsed, used = timestamp - previous[0], usage_ns - previous[1]
        if elapsed <= 0 or used < 0:
            return None
        return used * 10**9 // elapsed

    def forget(self, key: str) -> None:
        self._previous.pop(key, None)

    def _prune(self, now: int) -> None:
        self._pruned_at = now
        for key in [k for k, (ts, _) in self._previous.items() if now - ts > self.MAX_AGE_NS]:
            del self._previous[key]
