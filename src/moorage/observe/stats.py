"""Resource usage of a cgroup, read from the host (the CRI stats RPCs' source; directory trees: :mod:`.disk`).

Cgroups are read where the host's layout (:mod:`moorage.node.cgroupinfo`, detected once at start) says each
controller is mounted, so tests can point it at a tree of their own. A cgroup that is gone (its container exited
and was cleaned up) reads as all ``None``: stats never fail for a missing file.

``usage_nano_cores`` is a rate and needs two samples; :class:`CpuRates` keeps the previous one per key, as
containerd does. The memory details follow cAdvisor's reading of each layout: v1's ``total_*`` (hierarchical)
memory.stat keys against v2's (always hierarchical) ones, v1's memory.failcnt and max_usage_in_bytes against v2's
memory.events ``max`` and memory.peak.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from moorage.node.cgroupinfo import CgroupHost
from moorage.observe.cgroupfiles import flat_keyed, limit_or_none, member_pids, read_int

V2_KERNEL_KEYS = ("kernel_stack", "pagetables", "sec_pagetables", "percpu", "sock", "vmalloc", "slab")
"""v2 memory.stat's kernel memory, summed where the kernel has no ``kernel`` key of its own (older kernels)."""


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
class Hugetlb:
    """One huge page size's usage (``pagesize`` as the cgroup files name it: ``2MB``, ``1GB``)."""

    pagesize: str
    usage: int
    max_usage: int | None  # v1 only: v2 keeps no peak


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
    cache: int | None = None  # page cache (v1 total_cache, v2 file)
    mapped_file: int | None = None
    kernel: int | None = None  # kernel memory charged to the cgroup
    max_usage: int | None = None  # peak memory usage (v2: memory.peak, kernel 5.19 on)
    failcnt: int | None = None  # times usage hit the limit (v2: memory.events max)
    page_faults: int | None = None  # of the cgroup and its descendants
    major_page_faults: int | None = None
    own_page_faults: int | None = None  # of the cgroup's own processes (v1); v2 counts hierarchically only
    own_major_page_faults: int | None = None
    oom_kills: int | None = None
    active_file: int | None = None  # page cache on the active and inactive LRU lists
    inactive_file: int | None = None
    dirty: int | None = None  # page cache waiting to be written back, and being written back
    writeback: int | None = None
    refault_anon: int | None = None  # refaults of evicted anonymous and file pages (workingset_refault_*)
    refault_file: int | None = None
    pgscan: int | None = None  # pages scanned and reclaimed by reclaim (v2 only)
    pgsteal: int | None = None
    events_high: int | None = None  # times over memory.high, and at memory.max (v2 memory.events only)
    events_max: int | None = None
    swap_usage: int | None = None
    swap_limit: int | None = None  # None: no limit of its own
    pids: int | None = None  # tasks (threads) in the cgroup, pids.current
    procs: tuple[int, ...] | None = None  # the processes in the cgroup itself, cgroup.procs
    hugetlb: tuple[Hugetlb, ...] = ()
    pressure: dict[str, Pressure] = field(default_factory=dict)  # "cpu", "memory", "io"; empty without PSI
    io: tuple[DeviceIo, ...] = ()


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
    stat = flat_keyed(memory / "memory.stat") if memory else {}
    usage = read_int(memory / "memory.usage_in_bytes") if memory else None
    limit = limit_or_none(read_int(memory / "memory.limit_in_bytes")) if memory else None
    inactive = stat.get("total_inactive_file", stat.get("inactive_file"))
    working_set = None if usage is None else max(usage - (inactive or 0), 0)
    memsw = read_int(memory / "memory.memsw.usage_in_bytes") if memory else None
    memsw_limit = limit_or_none(read_int(memory / "memory.memsw.limit_in_bytes")) if memory else None
    ticks = flat_keyed(cpuacct / "cpuacct.stat") if cpuacct else {}  # USER_HZ ticks
    cfs = flat_keyed(groups["cpu"] / "cpu.stat") if "cpu" in groups else {}
    tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
    members = next((groups[c] for c in ("pids", "memory", "cpu", "cpuacct") if c in groups), None)

    def total(key: str) -> int | None:  # v1 memory.stat: the cgroup's own key, its hierarchy's total_ one
        return stat.get(f"total_{key}", stat.get(key))

    return CgroupStats(
        timestamp=time.time_ns(),
        cpu_usage_ns=read_int(cpuacct / "cpuacct.usage") if cpuacct else None,
        cpu_user_ns=ticks["user"] * tick_ns if "user" in ticks else None,
        cpu_system_ns=ticks["system"] * tick_ns if "system" in ticks else None,
        cfs_periods=cfs.get("nr_periods"),
        cfs_throttled_periods=cfs.get("nr_throttled"),
        cfs_throttled_ns=cfs.get("throttled_time"),
        memory_usage=usage,
        working_set=working_set,
        available=_available(limit, working_set),
        memory_limit=limit,
        rss=total("rss"),
        cache=total("cache"),
        mapped_file=total("mapped_file"),
        kernel=read_int(memory / "memory.kmem.usage_in_bytes") if memory else None,
        max_usage=read_int(memory / "memory.max_usage_in_bytes") if memory else None,
        failcnt=read_int(memory / "memory.failcnt") if memory else None,
        page_faults=total("pgfault"),
        major_page_faults=total("pgmajfault"),
        own_page_faults=stat.get("pgfault"),
        own_major_page_faults=stat.get("pgmajfault"),
        oom_kills=flat_keyed(memory / "memory.oom_control").get("oom_kill") if memory else None,
        active_file=total("active_file"),
        inactive_file=inactive,
        dirty=total("dirty"),
        writeback=total("writeback"),
        refault_anon=total("workingset_refault_anon"),
        refault_file=total("workingset_refault_file"),
        swap_usage=None if memsw is None or usage is None else max(memsw - usage, 0),
        swap_limit=None if memsw_limit is None or limit is None else max(memsw_limit - limit, 0),
        pids=read_int(pids / "pids.current") if pids else None,
        procs=member_pids(members) if members else None,
        hugetlb=_hugetlb(groups["hugetlb"], "usage_in_bytes") if "hugetlb" in groups else (),
        io=_blkio(blkio) if blkio else (),
    )


def _read_v2(group: Path) -> CgroupStats:
    cpu = flat_keyed(group / "cpu.stat")
    stat = flat_keyed(group / "memory.stat")
    usage = read_int(group / "memory.current")
    limit = limit_or_none(read_int(group / "memory.max"))
    working_set = None if usage is None else max(usage - stat.get("inactive_file", 0), 0)
    kernel = [stat[k] for k in V2_KERNEL_KEYS if k in stat]
    events = flat_keyed(group / "memory.events")

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
        cache=stat.get("file"),
        mapped_file=stat.get("file_mapped"),
        kernel=stat.get("kernel", sum(kernel) if kernel else None),
        max_usage=read_int(group / "memory.peak"),
        failcnt=events.get("max"),
        page_faults=stat.get("pgfault"),
        major_page_faults=stat.get("pgmajfault"),
        own_page_faults=stat.get("pgfault"),
        own_major_page_faults=stat.get("pgmajfault"),
        oom_kills=events.get("oom_kill"),
        active_file=stat.get("active_file"),
        inactive_file=stat.get("inactive_file"),
        dirty=stat.get("file_dirty"),
        writeback=stat.get("file_writeback"),
        refault_anon=stat.get("workingset_refault_anon"),
        refault_file=stat.get("workingset_refault_file"),
        pgscan=stat.get("pgscan"),
        pgsteal=stat.get("pgsteal"),
        events_high=events.get("high"),
        events_max=events.get("max"),
        swap_usage=read_int(group / "memory.swap.current"),
        swap_limit=limit_or_none(read_int(group / "memory.swap.max")),
        pids=read_int(group / "pids.current"),
        procs=member_pids(group),
        hugetlb=_hugetlb(group, "current"),
        pressure=_pressures(group),
        io=_io_stat(group / "io.stat"),
    )


def _hugetlb(group: Path, usage_file: str) -> tuple[Hugetlb, ...]:
    """``hugetlb.<pagesize>.<usage_file>`` per page size (v1 also ``max_usage_in_bytes``); v2's ``.rsvd.`` files,
    the reservations, are not usage."""
    out = []
    for path in sorted(group.glob(f"hugetlb.*.{usage_file}")):
        pagesize = path.name.split(".")[1]
        usage = read_int(path)
        if usage is not None and path.name == f"hugetlb.{pagesize}.{usage_file}":
            out.append(Hugetlb(pagesize, usage, read_int(group / f"hugetlb.{pagesize}.max_usage_in_bytes")))
    return tuple(out)


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


def _available(limit: int | None, working_set: int | None) -> int | None:
    if limit is None or working_set is None:
        return None
    return max(limit - working_set, 0)


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
