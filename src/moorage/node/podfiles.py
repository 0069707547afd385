"""The files a pod's containers share, written on the host: /etc/hostname, /etc/hosts, /etc/resolv.conf and
the pod's /dev/shm (a tmpfs of its own, or the node's for hostIPC pods); for a privileged pod, the read-write
sysfs superblock of its net namespace (:func:`mount_sysfs`).

Every function takes the pod's directory and the node's paths explicitly, so tests never touch the host's
/etc or /dev/shm.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from moorage.errors import InvalidArgument, MoorageError
from moorage.node.netns import in_netns

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 0x1, 0x2, 0x4, 0x8, 0x20, 0x1000
DEFAULT_SHM_BYTES = 64 << 20
MAX_DNS_SEARCHES = 32

LOCALHOST_LINES = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def write_hostname(pod_dir: Path, hostname: str) -> Path:
    path = pod_dir / "hostname"
    _write(path, hostname + "\n")
    return path


def write_hosts(pod_dir: Path, hostname: str, ips: Sequence[str] = (), node_hosts: Path | None = None) -> Path:
    """The pod's /etc/hosts: the node's for hostNetwork pods, else localhost entries and the pod's own name."""
    path = pod_dir / "hosts"
    if node_hosts is not None:
        _write(path, node_hosts.read_text() if node_hosts.exists() else LOCALHOST_LINES)
        return path
    own = "".join(f"{ip}\t{hostname}\n" for ip in ips)
    _write(path, "# Kubernetes-managed hosts file (moorage).\n" + LOCALHOST_LINES + own)
    return path


def write_resolv_conf(
    pod_dir: Path, servers: Sequence[str], searches: Sequence[str], options: Sequence[str], node_resolv: Path
) -> Path:
    """From the pod's DNSConfig; the node's file when the kubelet sent none (hostNetwork, dnsPolicy Default)."""
    path = pod_dir / "resolv.conf"
    if not (servers or searches or options):
        _write(path, node_resolv.read_text() if node_resolv.exists() else "")
        return path
    if len(searches) > MAX_DNS_SEARCHES:
        raise InvalidArgument(f"config.dns_config.searches has {len(searches)} entries; at most {MAX_DNS_SEARCHES}")
    for value, field in [(s, "servers") for s in servers] + [(s, "searches") for s in searches]:
        if not value or any(c.isspace() for c in value):
            raise InvalidArgument(f"config.dns_config.{field}: {value!r} is empty or contains white space")
    lines = [f"nameserver {s}" for s in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(options))
    _write(path, "\n".join(lines) + "\n")
    return path


def mount_shm(pod_dir: Path, size_bytes: int = DEFAULT_SHM_BYTES) -> Path:
    """A tmpfs for the pod's /dev/shm, shared by its containers (as the pause container's IPC would hold)."""
    path = pod_dir / "shm"
    path.mkdir(mode=0o1777, exist_ok=True)
    data = f"mode=1777,size={size_bytes}".encode()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"shm", str(path).encode(), b"tmpfs", flags, data) != 0:
        err = ctypes.get_errno()
        raise MoorageError(f"cannot mount the pod's /dev/shm at {path}: {os.strerror(err)}")
    return path


def chown(paths: Sequence[Path], uid: int, gid: int) -> None:
    """Give the pod's files (and its /dev/shm tmpfs's root) to the host ids of the root of its user namespace."""
    for path in paths:
        try:
            os.chown(path, uid, gid)
        except OSError as exc:
            raise MoorageError(f"cannot chown the pod's {path} to {uid}:{gid}: {exc.strerror}") from exc


def mount_sysfs(pod_dir: Path, netns: Path) -> Path:
    """Hold a read-write sysfs superblock for the pod's net namespace (pinned on ``netns``) at ``<pod_dir>/sys``.

    sysfs has one superblock per net namespace, made by its first mount there and kept while any mount of it
    lives, and a read-only first mount makes the superblock itself read-only: every later mount is then
    read-only too, whatever its own flags. So a privileged pod's unprivileged container (whose /sys is mounted
    read-only) or its pause container started first would leave /sys read-only for the pod's privileged
    containers. Mounted here read-write first, from inside the namespace, the superblock stays writable while
    the pod lives; each container's own mount still decides what it may write. This mount itself is made
    read-only at once (a bind remount changes the mount, not the superblock)."""
    path = pod_dir / "sys"
    path.mkdir(mode=0o700, exist_ok=True)
    target = str(path).encode()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC

    def mount() -> None:
        if _libc.mount(b"sysfs", target, b"sysfs", flags, None) != 0:
            err = ctypes.get_errno()
            raise MoorageError(f"cannot mount the pod's sysfs at {path} (net namespace {netns}): {os.strerror(err)}")
        if _libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None) != 0:
            err = ctypes.get_errno()
            unmount(path)
            raise MoorageError(f"cannot make the pod's sysfs mount {path} read-only: {os.strerror(err)}")

    in_netns(netns, mount)
    return path


def unmount(path: Path) -> None:
    """Detach a mount; nothing mounted there (or no such path) is fine."""
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise MoorageError(f"cannot unmount {path}: {os.strerror(err)}")


def remove(pod_dir: Path) -> None:
    """Remove the pod's directory; anything still mounted in it is detached first."""
    if not pod_dir.exists():
        return
    unmount(pod_dir / "shm")
    unmount(pod_dir / "sys")
    shutil.rmtree(pod_dir, ignore_errors=True)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)
