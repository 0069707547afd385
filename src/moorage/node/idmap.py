"""Idmapped mounts, made by moorage itself: open_tree(2), mount_setattr(2) with MOUNT_ATTR_IDMAP, move_mount(2).

A pod in a user namespace (``hostUsers: false``) runs as an unprivileged range of host ids: its root is, say,
host uid 100000. Its image's files are owned by 0 on disk, so the container's root filesystem must be an
*idmapped mount*: a mount whose ids are shifted through the pod's user namespace, where disk uid 0 is seen as
host uid 100000 (container uid 0), and what the container's root writes lands on disk as uid 0. runc 1.2+ and
crun 1.9+ make such mounts themselves; this node's runc 1.1 and crun 1.8 cannot, so moorage makes them and hands
the runtime a mount that is idmapped already (a bind of a bind keeps the idmapping):

1. ``fd = open_tree(AT_FDCWD, source, OPEN_TREE_CLONE)``: a detached copy of the mount at ``source``;
2. ``mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set: MOUNT_ATTR_IDMAP, userns_fd})``: idmap it with the user
   namespace pinned at ``userns`` (only a detached mount that was never attached can be idmapped);
3. ``move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)``: attach it at ``target``.

Without a user namespace (:func:`bind` with ``userns=None``) the same steps make a plain recursive bind; moorage
uses it to give the runtime a volume at a path under the container's bundle that the container's root can reach
(the runtime opens mount sources as that root, which cannot pass a 0700 directory of the host's root).

A container's root cannot be an idmapped mount of its overlay: overlayfs does not allow idmapping the overlay
itself (mount_setattr fails with EINVAL, Linux 6.18 included). It allows idmapped *layers* (Linux 5.19+), so the
root is an overlay over idmapped binds of the image's layers, with a plain upper directory owned by the pod's
root on the host, as containerd's overlay snapshotter does it (:mod:`moorage.runtime.containers.writable`).

:func:`probe_node` says whether the kernel can do all that (idmap a tmpfs and the daemon root's filesystem, mount
an overlay over an idmapped layer): Linux 5.12 has idmapped mounts, overlayfs takes idmapped layers from 5.19.
The syscall numbers are x86_64's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from moorage.errors import MoorageError
from moorage.node import namespaces
from moorage.node.cgroupinfo import Mount, parse_mountinfo

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
SYS_OPENAT2 = 437
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_RDONLY = 0x00000001
MNT_DETACH = 2
PROBE_HOST_ID = 1 << 30
PROBE_LENGTH = 65536


class IdmapError(MoorageError):
    """An idmapped (or plain) bind could not be made: the message names the paths and the syscall."""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise IdmapError(f"{what}: {os.strerror(err)}") from OSError(err, os.strerror(err))
    return result


def open_tree(source: Path | int, *, recursive: bool) -> int:
    """A detached clone of the mount at ``source`` (its submounts too when ``recursive``); a file descriptor.
    ``source`` may be a file descriptor (O_PATH), whose file is cloned as it is, its path not resolved again."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    if isinstance(source, int):
        return _check(
            _libc.syscall(SYS_OPEN_TREE, source, ctypes.c_char_p(b""), ctypes.c_uint(flags | AT_EMPTY_PATH)),
            f"open_tree {_name(source)}",
        )
    path = os.fsencode(source)
    return _check(
        _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, ctypes.c_char_p(path), ctypes.c_uint(flags)),
        f"open_tree {source}",
    )


def _name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"file descriptor {fd}"


def set_idmap(tree: int, userns: Path, what: str) -> None:
    """Idmap the detached mount ``tree`` with the user namespace at ``userns`` (a pinned or /proc ns file)."""
    set_attrs(tree, userns=userns, readonly=False, recursive=False, what=what)


def set_attrs(tree: int, *, userns: Path | None, readonly: bool, recursive: bool, what: str) -> None:
    """Idmap the detached mount ``tree`` with ``userns`` and/or make it read-only (its submounts too when
    ``recursive``). Read-only set here, on the host's side, is locked for a mount namespace of the pod's user
    namespace: a pod cannot remount it read-write, as it could a read-only flag its runtime set inside."""
    flags = (MOUNT_ATTR_IDMAP if userns is not None else 0) | (MOUNT_ATTR_RDONLY if readonly else 0)
    ns = os.open(userns, os.O_RDONLY | os.O_CLOEXEC) if userns is not None else -1
    try:
        attr = _MountAttr(flags, 0, 0, max(ns, 0))
        _check(
            _libc.syscall(
                SYS_MOUNT_SETATTR,
                ctypes.c_int(tree),
                ctypes.c_char_p(b""),
                ctypes.c_uint(AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)),
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            ),
            f"idmap {what} with the user namespace {userns}" if userns is not None else f"make {what} read-only",
        )
    finally:
        if ns >= 0:
            os.close(ns)


def move_mount(tree: int, target: Path, what: str) -> None:
    _check(
        _libc.syscall(
            SYS_MOVE_MOUNT,
            ctypes.c_int(tree),
            ctypes.c_char_p(b""),
            ctypes.c_int(AT_FDCWD),
            ctypes.c_char_p(os.fsencode(target)),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        f"attach {what} at {target}",
    )


def bind(source: Path | int, target: Path, userns: Path | None, *, readonly: bool = False) -> None:
    """Bind ``source`` at ``target`` (created as an empty file or directory like ``source`` when missing),
    recursively, as an ``rbind``: the mounts under ``source`` too, idmapped with ``userns`` when given (all of them
    or none: the kernel refuses the whole tree, EINVAL, when one of its filesystems cannot be idmapped);
    ``readonly``: read-only (locked for the pod's namespaces). ``target`` may be ``source`` itself: the idmapped
    copy is stacked over it.

    ``source`` is resolved once: a path is opened (O_PATH) and the file it named then is the one whose type makes
    ``target`` and the one bound, whatever is renamed or swapped for a symlink meanwhile; a file descriptor (O_PATH,
    of a host path resolved once by the caller) is bound as it is."""
    if not isinstance(source, int):
        fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
        try:
            bind(fd, target, userns, readonly=readonly)
        finally:
            os.close(fd)
        return
    what = _name(source)
    if not os.path.lexists(target):
        if stat.S_ISDIR(os.fstat(source).st_mode):
            target.mkdir(mode=0o755)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o444))
    tree = open_tree(source, recursive=True)
    try:
        if userns is not None or readonly:
            set_attrs(tree, userns=userns, readonly=readonly, recursive=True, what=f"{what} and the mounts under it")
        move_mount(tree, target, what)
    finally:
        os.close(tree)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_beneath(directory: int, relative: str) -> int:
    """An O_PATH descriptor of ``relative`` under the open ``directory``, resolved by the kernel without leaving it
    and without following any symlink (openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS): a name swapped for a
    symlink by whoever can write there fails (ELOOP) rather than reach outside."""
    # No O_NOFOLLOW: with it, a last component that is a symlink would be opened itself rather than refused.
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    path = ctypes.c_char_p(os.fsencode(relative))
    size = ctypes.c_size_t(ctypes.sizeof(how))
    return _check(
        _libc.syscall(SYS_OPENAT2, directory, path, ctypes.byref(how), size),
        f"open {relative} beneath {_name(directory)}",
    )


def visible_submounts(target: Path) -> list[str]:
    """The mount points under the mount at ``target`` that a path walk sees, relative to it, parents first: a mount
    hidden by another stacked at the same point is left out with everything under it, and so is a mount point
    whose directory was deleted."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        mounts = parse_mountinfo(table.read())
    point = str(target)
    tops = [m for m in mounts if m.mount_point == point]
    if not tops:
        return []
    children: dict[int, list[Mount]] = {}
    for mount in mounts:
        children.setdefault(mount.parent_id, []).append(mount)
    found: list[str] = []

    def walk(mount: Mount) -> None:
        below = children.get(mount.mount_id, [])
        stacked = [child for child in below if child.mount_point == mount.mount_point]
        if stacked:  # hidden under the last mount stacked on it: only that one is seen
            walk(stacked[-1])
            return
        if mount.mount_point != point:
            if mount.mount_point.endswith("//deleted"):
                return
            found.append(mount.mount_point[len(point) + 1 :])
        for index, child in enumerate(below):
            later = below[index + 1 :]  # mounted after it: one at a directory above it hides it
            if not any(child.mount_point.startswith(other.mount_point + "/") for other in later):
                walk(child)

    walk(tops[-1])
    return found


def detach_all(target: Path, limit: int = 16) -> None:
    """Detach every mount stacked at ``target`` (a file or a directory); none, or no such path, is fine.

    os.path.ismount cannot tell a bind from the same filesystem, so this unmounts until the kernel says EINVAL
    (not a mount point)."""
    for _ in range(limit):
        if _libc.umount2(os.fsencode(target), MNT_DETACH) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise IdmapError(f"cannot unmount {target}: {os.strerror(err)}")
    raise IdmapError(f"cannot unmount {target}: still mounted after {limit} unmounts")


@dataclass(frozen=True)
class Answer:
    """What :func:`answer` found: ``reason`` None when the node can, else why not; ``definite`` when that is the
    kernel's answer (it refused an idmapped mount or an overlay over one, or works), to keep for the daemon's life,
    not a failure of the probe itself (no room to mount, a leftover it could not remove...), to probe again."""

    reason: str | None
    definite: bool


class _Undecided(Exception):
    """The probe could not get the kernel's answer."""


def probe_node(workdir: Path) -> str | None:
    """None when this node can run pods in user namespaces the way moorage makes them, else why not
    (:func:`answer`'s reason)."""
    return answer(workdir).reason


def answer(workdir: Path) -> Answer:
    """Whether this node can run pods in user namespaces the way moorage makes them: a user namespace can be made
    and pinned, and :func:`probe` passes in it. ``workdir`` (made, and removed after) must be on the filesystem of
    the image layers (the daemon's root); what an earlier probe left there (killed half-way: its pinned namespace,
    tmpfs, idmapped bind or overlay still mounted) is unmounted and removed first."""
    try:
        _clear(workdir)
        workdir.mkdir(parents=True, exist_ok=True)  # the daemon's root (its parents) is made at start-up anyway
        try:
            maps = namespaces.IdMap(0, PROBE_HOST_ID, PROBE_LENGTH)
            try:
                pinned = namespaces.pin(set(), workdir / "ns", userns=namespaces.UserNamespace(maps, maps))
            except MoorageError as exc:
                raise _Undecided(f"cannot make a user namespace: {exc.message}") from exc
            try:
                return Answer(probe(workdir, pinned[namespaces.USER]), definite=True)
            finally:
                namespaces.unpin(pinned)
        finally:
            _clear(workdir)
    except _Undecided as exc:
        return Answer(str(exc), definite=False)
    except (OSError, MoorageError) as exc:
        what = exc.message if isinstance(exc, MoorageError) else str(exc)
        return Answer(f"the probe failed: {what}", definite=False)


def _clear(workdir: Path) -> None:
    """Unmount everything under ``workdir`` (deepest first, stacked mounts too) and remove it."""
    for _ in range(16):
        mounted = mounts_under(workdir)
        if not mounted:
            break
        for point in sorted(mounted, key=lambda p: len(p.parts), reverse=True):
            if _libc.umount2(os.fsencode(point), MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):
                    raise _Undecided(f"cannot unmount {point}, left by an earlier probe: {os.strerror(err)}")
    else:
        raise _Undecided(f"mounts left under {workdir} by an earlier probe do not go away")
    shutil.rmtree(workdir, ignore_errors=True)
    if os.path.lexists(workdir):
        raise _Undecided(f"cannot remove {workdir}, left by an earlier probe")


def mounts_under(directory: Path) -> list[Path]:
    """The mount points at ``directory`` and below it, as /proc/self/mountinfo lists them (parents first)."""
    prefix = os.fsencode(directory)
    found = []
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            point = _unescape(line.split(b" ")[4])
            if point == prefix or point.startswith(prefix + b"/"):
                found.append(Path(os.fsdecode(point)))
    return found


def _unescape(field: bytes) -> bytes:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes (\\040...)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def probe(workdir: Path, userns: Path) -> str | None:
    """None when the kernel can idmap a tmpfs (/dev/shm, volumes) and a directory of ``workdir``'s filesystem
    and mount an overlay over the idmapped directory (a container's root), with the user namespace at ``userns``;
    else why not. Everything mounted is unmounted and removed after. Raises :class:`_Undecided` where the probe
    itself failed (not the kernel's refusal to idmap)."""
    base = Path(tempfile.mkdtemp(prefix="idmap-probe-", dir=workdir))
    try:
        tmpfs = base / "tmpfs"
        tmpfs.mkdir()
        if _libc.mount(b"tmpfs", os.fsencode(tmpfs), b"tmpfs", 0, b"size=64k") != 0:
            err = ctypes.get_errno()
            raise _Undecided(f"cannot mount a tmpfs at {tmpfs}: {os.strerror(err)}")
        try:
            if (reason := _try(tmpfs, userns, "tmpfs")) is not None:
                return reason
        finally:
            _libc.umount2(os.fsencode(tmpfs), MNT_DETACH)
        for name in ("lower", "upper", "work", "idmapped", "merged"):
            (base / name).mkdir()
        if (reason := _try(base / "lower", userns, "the daemon root's filesystem")) is not None:
            return reason
        bind(base / "lower", base / "idmapped", userns)
        try:
            options = f"lowerdir={base / 'idmapped'},upperdir={base / 'upper'},workdir={base / 'work'}"
            made = subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", options, str(base / "merged")],
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode != 0:
                return f"the kernel cannot mount an overlay over an idmapped layer: {made.stderr.strip()}"
            _libc.umount2(os.fsencode(base / "merged"), MNT_DETACH)
        finally:
            _libc.umount2(os.fsencode(base / "idmapped"), MNT_DETACH)
        return None
    finally:
        shutil.rmtree(base, ignore_errors=True)


KERNEL_REFUSALS = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM})
"""What open_tree(2) and mount_setattr(2) answer when the kernel cannot (no syscall, no idmapping of that
filesystem); another errno (out of memory or file descriptors...) says nothing about the kernel."""


def _try(path: Path, userns: Path, fstype: str) -> str | None:
    try:
        tree = open_tree(path, recursive=False)
    except IdmapError as exc:
        if _errno(exc) not in KERNEL_REFUSALS:
            raise _Undecided(exc.message) from exc
        return f"the kernel has no open_tree(2) ({exc.message}); idmapped mounts need Linux 5.12+"
    try:
        set_idmap(tree, userns, f"a {fstype} mount")
    except IdmapError as exc:
        if _errno(exc) not in KERNEL_REFUSALS:
            raise _Undecided(exc.message) from exc
        return f"the kernel cannot make idmapped mounts of {fstype} ({exc.message})"
    finally:
        os.close(tree)
    return None


def _errno(exc: IdmapError) -> int | None:
    cause = exc.__cause__
    return cause.errno if isinstance(cause, OSError) else None
