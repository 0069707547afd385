"""linux.devices and the device cgroup allowlist (linux.resources.devices).

A CRI device names a host path (a device node, or a directory whose device nodes are all taken) that is stat'ed
here for its type and numbers. A privileged container gets every device node of the host's /dev and an
allow-all cgroup rule.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moorage.cri import pb
from moorage.errors import InvalidArgument

# Skipped when copying the host's /dev for a privileged container, as containerd's HostDevices does.
HOST_DEV_SKIP = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def _wildcard(major: int | None, minor: int | None, kind: str, access: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": kind, "access": access}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


# containerd's default cgroup device rules: deny all, mknod anything, use the usual pseudo-devices.
DEFAULT_DEVICE_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    _wildcard(None, None, "c", "m"),
    _wildcard(None, None, "b", "m"),
    _wildcard(1, 3, "c", "rwm"),  # /dev/null
    _wildcard(1, 8, "c", "rwm"),  # /dev/random
    _wildcard(1, 7, "c", "rwm"),  # /dev/full
    _wildcard(5, 0, "c", "rwm"),  # /dev/tty
    _wildcard(1, 5, "c", "rwm"),  # /dev/zero
    _wildcard(1, 9, "c", "rwm"),  # /dev/urandom
    _wildcard(5, 1, "c", "rwm"),  # /dev/console
    _wildcard(136, None, "c", "rwm"),  # /dev/pts/*
    _wildcard(5, 2, "c", "rwm"),  # /dev/ptmx
    _wildcard(10, 200, "c", "rwm"),  # /dev/net/tun
)


def _node(path: str, container_path: str) -> dict[str, Any] | None:
    """The OCI device for the node at ``path``, or None when it is not a device node."""
    st = os.stat(path)
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return {
        "path": container_path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def _check_permissions(perms: str, field: str) -> str:
    perms = perms or "rwm"
    if any(c not in "rwm" for c in perms):
        raise InvalidArgument(f"{field}.permissions: {perms!r} must only contain r, w and m")
    return perms


def cri_devices(devices: Sequence[pb.Device]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(linux.devices, cgroup allow rules) for the CRI devices."""
    nodes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for i, d in enumerate(devices):
        field = f"devices[{i}]"
        perms = _check_permissions(d.permissions, field)
        if not d.host_path or not os.path.exists(d.host_path):
            raise InvalidArgument(f"{field}.host_path: device {d.host_path!r} does not exist")
        dest = d.container_path or d.host_path
        found: list[dict[str, Any]] = []
        if os.path.isdir(d.host_path):
            for dirpath, _dirs, files in os.walk(d.host_path):
                for name in sorted(files):
                    full = os.path.join(dirpath, name)
                    node = _node(full, os.path.join(dest, os.path.relpath(full, d.host_path)))
                    if node is not None:
                        found.append(node)
        else:
            node = _node(d.host_path, dest)
            if node is None:
                raise InvalidArgument(f"{field}.host_path: {d.host_path} is not a device node")
            found.append(node)
        for node in found:
            nodes.append(node)
            rules.append(_wildcard(node["major"], node["minor"], node["type"], perms))
    return nodes, rules


def host_devices(dev_root: Path) -> list[dict[str, Any]]:
    """Every device node under ``dev_root`` (the host's /dev), at the same path in the container."""
    out: list[dict[str, Any]] = []
    for dirpath, dirs, files in os.walk(dev_root):
        dirs[:] = sorted(d for d in dirs if not (dirpath == str(dev_root) and d in HOST_DEV_SKIP))
        for name in sorted(files):
            full = os.path.join(dirpath, name)
            if full == os.path.join(dev_root, "console") or os.path.islink(full):
                continue
            try:
                node = _node(full, "/dev/" + os.path.relpath(full, dev_root))
            except OSError:
                continue  # a node removed while walking, or a dangling symlink
            if node is not None:
                out.append(node)
    return out
