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
from dataclasses import dataclass, field, replace
from pathlib import Path

from moorage.node.cgroupinfo import CgroupHost

UNLIMITED = 1 << 62
"""Memory limits at or above this mean no limit (v1 writes PAGE_COUNTER_MAX pages as bytes)."""


@dataclass(frozen=True)
class PsiLine:
    """One line of a ``*.pressure`` file: the stall time so far and its recent share, in percent."""

    total_us: int
    avg10: float
    avg60: float
    avg300: float


@dataclass(frozen=True)
class Pressure:
    """A ``cpu.pressure``/``memory.pressure``/``io.pressure`` file: some tasks stalled, all tasks stalled."""

    some: PsiLine | None
    full: PsiLine | None


@dataclass(frozen=True)
class DeviceIo:
    """One block device's cumulative I/O of the cgroup (v2 ``io.stat``; v1 blkio's recursive throttle files)."""

    major: int
    minor: int
    read_bytes: int
    write_bytes: int
    reads: int
    writes: int


@dataclass(frozen=True)
class CgroupStats:
    timestamp: int
    """time.time_ns() when read."""
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cfs_periods: int | None = None  # CFS enforcement periods that elapsed, of which the cgroup was throttled in
    cfs_throttled_periods: int | None = None
    cfs_throttled_ns: int | None = None
    memory_usage: int | None = None
    working_set: int | None = None
    available: int | None = None
    memory_limit: int | None = None  # None: no limit
    rss: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    oom_kills: int | None = None
    swap_usage: int | None = None
    swap_limit: int | None = None  # None: no limit of its own
    pids: int | None = None
    pressure: dict[str, Pressure] = field(default_factory=dict)  # "cpu", "memory", "io"; empty without PSI
    io: tuple[DeviceIo, ...] = ()


@dataclass(frozen=True)
class DiskUsage:
    timestamp: int
    used_bytes: int
    inodes: int


def read_cgroup(path: str, host: CgroupHost) -> CgroupStats:
    """The usage of the cgroup at ``path`` (``/moorage/<id>``, relative to each hierarchy) on ``host``'s layout:
    the unified tree on v2, each controller's own hierarchy on v1 and hybrid (as the kubelet reads them). On a
    hybrid host the pressure files come from the cgroup2 mount, where the OCI runtime makes the cgroup too."""
    relative = path.strip("/")
    if host.unified and host.v2_mount is not None:
        return _read_v2(Path(host.v2_mount) / relative)
    stats = _read_v1({name: Path(point) / relative for name, point in host.v1_controllers.items()})
    if host.v2_mount is not None:
        return replace(stats, pressure=_pressures(Path(host.v2_mount) / relative))
    return stats


def _read_v1(groups: dict[str, Path]) -> CgroupStats:
    memory, cpuacct, pids, blkio = (groups.get(c) for c in ("memory", "cpuacct", "pids", "blkio"))
    stat = _flat_keyed(memory / "memory.stat") if memory else {}
    usage = _int(memory / "memory.usage_in_bytes") if memory else None
    limit = _limit(_int(memory / "memory.limit_in_bytes")) if memory else None
    inactive = stat.get("total_inactive_file", stat.get("inactive_file"))
    working_set = None if usage is None else max(usage - (inactive or 0), 0)
    memsw = _int(memory / "memory.memsw.usage_in_bytes") if memory else None
    memsw_limit = _limit(_int(memory / "memory.memsw.limit_in_bytes")) if memory else None
    ticks = _flat_keyed(cpuacct / "cpuacct.stat") if cpuacct else {}  # USER_HZ ticks
    cfs = _flat_keyed(groups["cpu"] / "cpu.stat") if "cpu" in groups else {}
    tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
    return CgroupStats(
        timestamp=time.time_ns(),
        cpu_usage_ns=_int(cpuacct / "cpuacct.usage") if cpuacct else None,
        cpu_user_ns=ticks["user"] * tick_ns if "user" in ticks else None,
        cpu_system_ns=ticks["system"] * tick_ns if "system" in ticks else None,
        cfs_periods=cfs.get("nr_periods"),
        cfs_throttled_periods=cfs.get("nr_throttled"),
        cfs_throttled_ns=cfs.get("throttled_time"),
        memory_usage=usage,
        working_set=working_set,
        available=_available(limit, working_set),
        memory_limit=limit,
        rss=stat.get("total_rss", stat.get("rss")),
        page_faults=stat.get("total_pgfault", stat.get("pgfault")),
        major_page_faults=stat.get("total_pgmajfault", stat.get("pgmajfault")),
        oom_kills=_flat_keyed(memory / "memory.oom_control").get("oom_kill") if memory else None,
        swap_usage=None if memsw is None or usage is None else max(memsw - usage, 0),
        swap_limit=None if memsw_limit is None or limit is None else max(memsw_limit - limit, 0),
        pids=_int(pids / "pids.current") if pids else None,
        io=_blkio(blkio) if blkio else (),
    )


def _read_v2(group: Path) -> CgroupStats:
    cpu = _flat_keyed(group / "cpu.stat")
    stat = _flat_keyed(group / "memory.stat")
    usage = _int(group / "memory.current")
    limit = _limit(_int(group / "memory.max"))
    working_set = None if usage is None else max(usage - stat.get("inactive_file", 0), 0)

    def ns(key: str) -> int | None:
        return None if key not in cpu else cpu[key] * 1000

    return CgroupStats(
        timestamp=time.time_ns(),
        cpu_usage_ns=ns("usage_usec"),
        cpu_user_ns=ns("user_usec"),
        cpu_system_ns=ns("system_usec"),
        cfs_periods=cpu.get("nr_periods"),
        cfs_throttled_periods=cpu.get("nr_throttled"),
        cfs_throttled_ns=ns("throttled_usec"),
        memory_usage=usage,
        working_set=working_set,
        available=_available(limit, working_set),
        memory_limit=limit,
        rss=stat.get("anon"),
        page_faults=stat.get("pgfault"),
        major_page_faults=stat.get("pgmajfault"),
        oom_kills=_flat_keyed(group / "memory.events").get("oom_kill"),
        swap_usage=_int(group / "memory.swap.current"),
        swap_limit=_limit(_int(group / "memory.swap.max")),
        pids=_int(group / "pids.current"),
        pressure=_pressures(group),
        io=_io_stat(group / "io.stat"),
    )


def _pressures(group: Path) -> dict[str, Pressure]:
    """The group's PSI files that exist (none where the kernel has PSI off)."""
    out = {}
    for resource in ("cpu", "memory", "io"):
        try:
            text = (group / f"{resource}.pressure").read_text()
        except OSError:
            continue
        lines = {}
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            fields = dict(item.split("=", 1) for item in rest.split() if "=" in item)
            try:
                lines[kind] = PsiLine(
                    int(fields["total"]), float(fields["avg10"]), float(fields["avg60"]), float(fields["avg300"])
                )
            except (KeyError, ValueError):
                continue
        out[resource] = Pressure(lines.get("some"), lines.get("full"))
    return out


def _io_stat(path: Path) -> tuple[DeviceIo, ...]:
    """v2 ``io.stat``: ``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`` per device."""
    try:
        text = path.read_text()
    except OSError:
        return ()
    devices = []
    for line in text.splitlines():
        device, *items = line.split()
        major, _, minor = device.partition(":")
        values = dict(item.split("=", 1) for item in items if "=" in item)
        try:
            devices.append(
                DeviceIo(
                    int(major),
                    int(minor),
                    int(values.get("rbytes", 0)),
                    int(values.get("wbytes", 0)),
                    int(values.get("rios", 0)),
                    int(values.get("wios", 0)),
                )
            )
        except ValueError:
            continue
    return tuple(devices)


def _blkio(group: Path) -> tuple[DeviceIo, ...]:
    """v1 blkio: ``MAJ:MIN Read|Write|... N`` lines of the recursive throttle files (bytes, then operations)."""
    totals: dict[tuple[int, int], dict[str, int]] = {}
    for file, kind in (("io_service_bytes_recursive", "bytes"), ("io_serviced_recursive", "ops")):
        try:
            text = (group / f"blkio.throttle.{file}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[1] not in ("Read", "Write") or ":" not in parts[0]:
                continue
            major, _, minor = parts[0].partition(":")
            try:
                key, value = (int(major), int(minor)), int(parts[2])
            except ValueError:
                continue
            totals.setdefault(key, {})[f"{parts[1]}-{kind}"] = value
    return tuple(
        DeviceIo(
            major,
            minor,
            v.get("Read-bytes", 0),
            v.get("Write-bytes", 0),
            v.get("Read-ops", 0),
            v.get("Write-ops", 0),
        )
        for (major, minor), v in sorted(totals.items())
    )


def _limit(value: int | None) -> int | None:
    """A limit file's value, None for no limit (``max``, or v1's huge PAGE_COUNTER_MAX)."""
    return None if value is None or value >= UNLIMITED else value


def _available(limit: int | None, working_set: int | None) -> int | None:
    if limit is None or working_set is None:
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
