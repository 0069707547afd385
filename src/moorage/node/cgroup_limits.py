"""A pod's own cgroup limits, written to its cgroup files (UpdatePodSandboxResources), and its memory usage, read
before a decrease, on each of the node's layouts: each controller's v1 hierarchy (v1 and hybrid hosts, as the
kubelet and runc use them) or the one v2 tree.

=====================  ==========================================  ============================================
limit                  cgroup v1                                   cgroup v2
=====================  ==========================================  ============================================
memory (0: none)       memory/memory.limit_in_bytes (-1: none)     memory.max (``max``: none)
cpu quota and period   cpu/cpu.cfs_period_us, cpu/cpu.cfs_quota_us cpu.max (``<quota|max> <period>``)
cpu shares             cpu/cpu.shares                              cpu.weight (runc 1.1's conversion, as for
                                                                   the pod's containers)
=====================  ==========================================  ============================================

Nothing here makes a cgroup: the pod's is the kubelet's (it exists before the pod's first container), and writing
into a missing one is refused rather than leaving a directory nobody removes.
"""

from __future__ import annotations

import contextlib
import errno
import math
from dataclasses import dataclass
from pathlib import Path

from moorage.errors import FailedPrecondition
from moorage.node.cgroupinfo import CgroupHost

DEFAULT_CPU_PERIOD = 100_000  # µs: the kernel's and the kubelet's
MIN_CPU_SHARES = 2  # the kernel's minimum; the kubelet's for a pod requesting no cpu
MAX_CPU_SHARES = 262144  # the kernel's maximum (cpu.weight 10000 on v2)


@dataclass(frozen=True)
class PodLimits:
    memory: int  # bytes; 0: no limit
    cpu_quota: int  # µs per period; 0 or -1: no limit
    cpu_period: int  # µs
    cpu_shares: int


def cpu_weight(shares: int) -> int:
    """cgroup v2's cpu.weight (1-10000) for v1 shares (2-262144), as runc 1.1 converts a container's."""
    return 1 + ((max(shares, MIN_CPU_SHARES) - 2) * 9999) // 262142


def cpu_weights(shares: int) -> set[int]:
    """Every cpu.weight a kubelet or OCI runtime may have written for ``shares``: runc 1.1's linear conversion,
    or the newer one (runc 1.4, crun 1.23, the kubelet's libcontainer since) that maps 1024 to the default 100.
    One already there, or one off it (the kubelet reads shares back from the weight, which loses precision), is
    kept, so Moorage does not undo a kubelet's write with the other conversion."""
    log = math.log2(max(shares, MIN_CPU_SHARES))
    exact = {cpu_weight(shares), math.ceil(10 ** ((log * log + 125 * log) / 612.0 - 7.0 / 34.0))}
    return {w + d for w in exact for d in (-1, 0, 1)}


def writes(host: CgroupHost, path: str, limits: PodLimits) -> list[tuple[Path, str]]:
    """What to write where, in order, for the pod cgroup ``path`` (relative to each hierarchy's root)."""
    relative = path.strip("/")
    unlimited_cpu = limits.cpu_quota <= 0
    if host.unified and host.v2_mount is not None:
        root = Path(host.v2_mount) / relative
        return [
            (root / "memory.max", str(limits.memory) if limits.memory else "max"),
            (root / "cpu.max", f"{'max' if unlimited_cpu else limits.cpu_quota} {limits.cpu_period}"),
            (root / "cpu.weight", str(cpu_weight(limits.cpu_shares))),
        ]
    out: list[tuple[Path, str]] = []
    if "memory" in host.v1_controllers:
        memory = Path(host.v1_controllers["memory"]) / relative
        out.append((memory / "memory.limit_in_bytes", str(limits.memory) if limits.memory else "-1"))
    if "cpu" in host.v1_controllers:
        cpu = Path(host.v1_controllers["cpu"]) / relative
        out += [  # the quota lifted first, so a shorter period never meets a quota it cannot hold
            (cpu / "cpu.cfs_quota_us", "-1"),
            (cpu / "cpu.cfs_period_us", str(limits.cpu_period)),
            (cpu / "cpu.cfs_quota_us", "-1" if unlimited_cpu else str(limits.cpu_quota)),
            (cpu / "cpu.shares", str(max(limits.cpu_shares, MIN_CPU_SHARES))),
        ]
    return out


def apply(host: CgroupHost, path: str, limits: PodLimits) -> None:
    """Write ``limits`` into the pod cgroup ``path``, all or none: when the kernel refuses a value (a quota below
    one of the pod's containers', say) the values written before it are put back, and FailedPrecondition names
    the file and the reason. A missing cgroup is FailedPrecondition too."""
    plan = writes(host, path, limits)
    for file, _ in plan:
        if not file.parent.is_dir():
            raise FailedPrecondition(f"pod cgroup {file.parent} does not exist (the kubelet makes it)")
    try:
        before = {file: file.read_text().strip() for file, _ in plan}
    except OSError as exc:
        raise FailedPrecondition(f"cannot read {exc.filename}: {exc.strerror}") from None
    kept = {str(w) for w in cpu_weights(limits.cpu_shares)}
    plan = [(f, v) for f, v in plan if not (f.name == "cpu.weight" and before[f] in kept)]
    done: list[Path] = []
    for file, value in plan:
        try:
            file.write_text(value)
        except OSError as exc:
            _restore(done, before)
            reason = "the kernel refused it" if exc.errno == errno.EINVAL else exc.strerror
            raise FailedPrecondition(f"cannot write {value} to {file}: {reason}") from None
        done.append(file)


def _restore(done: list[Path], before: dict[Path, str]) -> None:
    for file in reversed(done):
        with contextlib.suppress(OSError):
            file.write_text(before[file])


def memory_usage(host: CgroupHost, path: str) -> int | None:
    """The pod cgroup's memory usage in bytes (what the kubelet compares a new limit with), None if unknown."""
    return _memory_file(host, path, "memory.current", "memory.usage_in_bytes")


def memory_limit(host: CgroupHost, path: str) -> int | None:
    """The pod cgroup's memory limit in bytes; None for none (``max``, v1's huge page-counter maximum) or unknown."""
    limit = _memory_file(host, path, "memory.max", "memory.limit_in_bytes")
    return None if limit is None or limit >= 1 << 62 else limit


def _memory_file(host: CgroupHost, path: str, v2_name: str, v1_name: str) -> int | None:
    relative = path.strip("/")
    if host.unified and host.v2_mount is not None:
        file = Path(host.v2_mount) / relative / v2_name
    elif "memory" in host.v1_controllers:
        file = Path(host.v1_controllers["memory"]) / relative / v1_name
    else:
        return None
    try:
        return int(file.read_text())
    except (OSError, ValueError):
        return None
