"""Capabilities, masked and read-only paths: the privilege fragments of the spec.

SELinux is deliberately absent: the nodes Moorage targets run with it disabled in the kernel, so a
``selinux_options`` request has nothing to act on and is left out of the spec. Seccomp lives in :mod:`.seccomp`,
AppArmor in :mod:`.apparmor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moorage.cri import pb
from moorage.errors import InvalidArgument

# Every capability of Linux 5.9+ (0..40), in bit order.
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# containerd's default set (the same as Docker's), in containerd's order.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


def normalize_capability(name: str, field: str) -> str:
    """``net_admin``, ``NET_ADMIN`` and ``CAP_NET_ADMIN`` are all ``CAP_NET_ADMIN``; ``ALL`` stays ``ALL``."""
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in ALL_CAPABILITIES:
        raise InvalidArgument(f"{field}: unknown capability {name!r}")
    return full


def current_capabilities(status: Path = Path("/proc/self/status")) -> tuple[str, ...]:
    """The daemon's bounding set, in bit order: what "all capabilities" can mean for its containers (containerd's
    ``WithAllCurrentCapabilities``). A capability the daemon lacks cannot be granted; the runtime's capset fails."""
    for line in status.read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return tuple(name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1)
    return ALL_CAPABILITIES


def capabilities(
    security: pb.LinuxContainerSecurityContext, available: Sequence[str] = ALL_CAPABILITIES
) -> dict[str, list[str]]:
    """The OCI ``process.capabilities``: (default + add - drop) in bounding, effective and permitted.

    In containerd's order: ``ALL`` in add starts from every capability, ``ALL`` in drop from none; then the named
    adds are added and the named drops removed (a capability both added and dropped is dropped), so
    ``drop: [ALL], add: [X]`` is exactly X. Ambient capabilities are added to every set, and to inheritable and ambient
    (the kernel keeps an ambient capability only when it is also permitted and inheritable); without them
    inheritable and ambient are empty (CVE-2022-24769).
    """
    if security.privileged:
        every = list(available)
        return {"bounding": every, "effective": every, "permitted": every}
    caps = security.capabilities
    add = [normalize_capability(c, "capabilities.add_capabilities") for c in caps.add_capabilities]
    drop = [normalize_capability(c, "capabilities.drop_capabilities") for c in caps.drop_capabilities]
    ambient = [normalize_capability(c, "capabilities.add_ambient_capabilities") for c in caps.add_ambient_capabilities]
    if "ALL" in ambient:
        raise InvalidArgument("capabilities.add_ambient_capabilities: ALL is not allowed")

    if "ALL" in drop:  # checked first: containerd applies add-ALL, then drop-ALL
        current = []
    elif "ALL" in add:
        current = list(available)
    else:
        current = list(DEFAULT_CAPABILITIES)
    current.extend(c for c in dict.fromkeys(add) if c != "ALL" and c not in current)
    current = [c for c in current if c not in drop]
    current.extend(c for c in dict.fromkeys(ambient) if c not in current)
    result = {"bounding": current, "effective": list(current), "permitted": list(current)}
    if ambient:
        result["inheritable"] = list(ambient)
        result["ambient"] = list(ambient)
    return result


def masked_paths(security: pb.LinuxContainerSecurityContext) -> list[str]:
    """containerd's defaults, or exactly the request's when it lists any; none for a privileged container."""
    if security.privileged:
        return []
    return list(security.masked_paths) if security.masked_paths else list(DEFAULT_MASKED_PATHS)


def readonly_paths(security: pb.LinuxContainerSecurityContext) -> list[str]:
    if security.privileged:
        return []
    return list(security.readonly_paths) if security.readonly_paths else list(DEFAULT_READONLY_PATHS)


def linux_fragment(security: pb.LinuxContainerSecurityContext) -> dict[str, Any]:
    return {"maskedPaths": masked_paths(security), "readonlyPaths": readonly_paths(security)}
