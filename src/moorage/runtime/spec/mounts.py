"""mounts and linux.rootfsPropagation.

Three sources, later ones replacing earlier ones at the same destination (as containerd does):

1. the default filesystems every container gets (runc's default spec: /proc, /dev, /dev/pts, /dev/shm,
   /dev/mqueue, /sys, /sys/fs/cgroup), /sys and /sys/fs/cgroup read-write only when privileged;
2. the pod's files (``pod_files``: /etc/hosts, /etc/resolv.conf, /etc/hostname bound read-only when the root
   filesystem is, and the pod's /dev/shm directory);
3. the CRI mounts, ``rbind`` with their propagation and ``ro``/``rw``. Their host path must exist (the kubelet
   creates it; a missing one means a bug or a race with a volume teardown) and symlinks in it are resolved here.
   ``recursive_read_only`` adds the runtime's ``rro`` option (mount_setattr(2) with AT_RECURSIVE: the bind's
   submounts are read-only too, where plain ``ro`` leaves them writable); as Kubernetes defines it, the mount
   must be read-only and private, and the pod's runtime must support it (``runc features`` lists ``rro``).
   ``mount_options`` (Kubernetes' VolumeMount.bindMountOptions) are added as OCI mount options; only the ones
   Kubernetes allows (noexec, nodev, nosuid) are accepted. Image volumes (``image`` set) arrive here already
   mounted, as read-only binds of their directory (:mod:`moorage.runtime.containers.image_volumes`).

The result is stably sorted by destination depth, so a parent is always mounted before its children.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument, MoorageError, Unimplemented

PROPAGATION = {
    pb.MountPropagation.PROPAGATION_PRIVATE: "rprivate",
    pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.MountPropagation.PROPAGATION_BIDIRECTIONAL: "rshared",
}

# Mount.mount_options allowed: exactly what Kubernetes' VolumeMount.bindMountOptions allows (k8s.io/api core/v1).
BIND_MOUNT_OPTIONS = ("noexec", "nodev", "nosuid")

POD_FILES_READONLY_WITH_ROOTFS = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")


def default_mounts(privileged: bool) -> list[dict[str, Any]]:
    sys_mode = "rw" if privileged else "ro"
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode],
        },
    ]


def _clean(path: str, field: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"{field}: container path {path!r} must be absolute")
    return os.path.normpath(path).replace("//", "/")


def pod_file_mounts(pod_files: Mapping[str, Path], readonly_rootfs: bool) -> list[dict[str, Any]]:
    out = []
    for dest, source in pod_files.items():
        mode = "ro" if readonly_rootfs and dest in POD_FILES_READONLY_WITH_ROOTFS else "rw"
        options = ["rbind", "rprivate", mode]
        if dest == "/dev/shm":
            options = ["rbind", "rprivate", "nosuid", "noexec", "nodev", "rw"]
        mount = {"destination": _clean(dest, "pod_files"), "type": "bind", "source": str(source), "options": options}
        out.append(mount)
    return out


def cri_mount(mount: pb.Mount, index: int, recursive_read_only: bool = False) -> dict[str, Any]:
    """The OCI mount of CRI ``mount`` (``mounts[index]``); ``recursive_read_only``: whether the runtime has ``rro``."""
    field = f"mounts[{index}]"
    if mount.HasField("image") and mount.image.image:
        # runtime/containers/image_volumes.py mounts image volumes and makes them read-only binds before the spec.
        raise MoorageError(f"{field}: image volume of {mount.image.image!r} not mounted before the spec was built")
    if mount.uidMappings or mount.gidMappings:
        raise Unimplemented(f"{field}: idmapped mounts are not supported")
    dest = _clean(mount.container_path, f"{field}.container_path")
    if not mount.host_path:
        raise InvalidArgument(f"{field}.host_path: required")
    if not os.path.exists(mount.host_path):
        raise InvalidArgument(f"{field}.host_path: {mount.host_path} does not exist")
    options = ["rbind", PROPAGATION.get(mount.propagation, "rprivate"), "ro" if mount.readonly else "rw"]
    if mount.recursive_read_only:
        if not mount.readonly:
            raise InvalidArgument(f"{field}: recursive_read_only needs readonly")
        if mount.propagation != pb.MountPropagation.PROPAGATION_PRIVATE:
            mode = pb.MountPropagation.Name(mount.propagation)
            raise InvalidArgument(f"{field}: recursive_read_only needs private propagation, not {mode}")
        if not recursive_read_only:
            raise FailedPrecondition(
                f"{field}: recursive_read_only: the pod's runtime handler does not support recursive read-only "
                "mounts (its OCI runtime's `features` lists no rro mount option, or the kernel is older than 5.12)"
            )
        options.append("rro")
    for option in mount.mount_options:
        if option not in BIND_MOUNT_OPTIONS:
            raise InvalidArgument(
                f"{field}.mount_options: {option!r} is not allowed on the mount at {dest} "
                f"(allowed: {', '.join(BIND_MOUNT_OPTIONS)})"
            )
        if option not in options:
            options.append(option)
    # selinux_relabel is ignored: SELinux is disabled on Moorage's nodes.
    return {"destination": dest, "type": "bind", "source": os.path.realpath(mount.host_path), "options": options}


def _depth(mount: Mapping[str, Any]) -> int:
    dest = str(mount["destination"])
    return 0 if dest == "/" else dest.count("/")


def build(
    container_mounts: Sequence[pb.Mount],
    pod_files: Mapping[str, Path],
    privileged: bool,
    readonly_rootfs: bool,
    recursive_read_only: bool = False,
) -> list[dict[str, Any]]:
    by_dest: dict[str, dict[str, Any]] = {}
    for m in [*default_mounts(privileged), *pod_file_mounts(pod_files, readonly_rootfs)]:
        by_dest.pop(m["destination"], None)
        by_dest[m["destination"]] = m
    for i, cm in enumerate(container_mounts):
        m = cri_mount(cm, i, recursive_read_only)
        by_dest.pop(m["destination"], None)
        by_dest[m["destination"]] = m
    return sorted(by_dest.values(), key=_depth)


def rootfs_propagation(container_mounts: Sequence[pb.Mount]) -> str | None:
    """rshared when a mount is bidirectional, rslave when one is host-to-container, else unset (runc: rprivate).

    A mount can only propagate through the container's root if the root itself does.
    """
    modes = {m.propagation for m in container_mounts}
    if pb.MountPropagation.PROPAGATION_BIDIRECTIONAL in modes:
        return "rshared"
    if pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER in modes:
        return "rslave"
    return None
