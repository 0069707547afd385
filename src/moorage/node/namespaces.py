"""Pinned pod namespaces: net, ipc and uts namespaces that live on without any process, as CRI-O's pinns makes them.

For a pod in a user namespace (``userns``) the helper first unshares the user namespace alone and waits while
the parent writes its uid_map and gid_map (:func:`moorage.node.pin_helper.map_user`), then makes the others
inside it, so they are owned by it; the user namespace is pinned with them as ``user``.

:func:`pin` starts a short-lived helper (:mod:`moorage.node.pin_helper`: the static C program ``pinns`` when
built, ~1 ms; else Python without site packages, ~25 ms) that unshares the namespaces, brings up ``lo`` in a new
net namespace, writes the pod's hostname and namespaced sysctls from inside them, and reports ready on stdout. The
parent bind-mounts each ``<proc>/<pid>/ns/<kind>`` onto ``<directory>/<kind>`` with mount(2), then closes the
helper's stdin, which makes it exit; the bind mounts keep the namespaces alive. The helper also exits on stdin EOF
if the daemon dies mid-pin, so no helper outlives :func:`pin`. On any failure every mount made so far is detached
and every file created removed before the error propagates.

Lifecycle::

    paths = pin({"net", "ipc", "uts"}, root / "pinns" / pod_id, hostname="web-0",
                sysctls={"net.ipv4.ip_unprivileged_port_start": "0"})
    # hand paths["net"] to CNI, the paths to the OCI spec's linux.namespaces[].path ...
    unpin(paths)           # idempotent: safe to call again after a crash or a partial StopPodSandbox

Mount propagation: bind-mounting an nsfs file (net, ipc, uts) works onto a file on a plain ext4 or tmpfs
mount, private or shared (checked on Linux 6.x: with a shared parent the nsfs mount propagates to the peer
mounts in other mount namespaces, and the MNT_DETACH in :func:`unpin` propagates the same way). The kernel
refuses with EINVAL when the target's mount is not in the caller's mount namespace, or would loop (mnt
namespace files on a shared mount). If the bind mount fails with EINVAL, :func:`pin` makes the directory a
private bind mount of itself (:func:`make_private`, as ``ip netns`` does for /run/netns) and retries once; that
self-bind is left in place for the next pods and never undone.

Everything here is synchronous and takes ~30 ms (one interpreter start); call it through
``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from moorage.errors import AlreadyExists, InvalidArgument
from moorage.node import pin_helper
from moorage.node.pin_helper import NamespaceError
from moorage.node.sysctls import InvalidSysctl, Kind, sysctl_kind, sysctl_parts

USER = "user"
"""The pinned user namespace's file name: with ``userns`` maps, :func:`pin` makes one first and owns the rest."""


@dataclass(frozen=True)
class IdMap:
    """One line of a user namespace's uid_map or gid_map: ids ``inside`` .. + ``length`` are ``outside`` ..."""

    inside: int
    outside: int
    length: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.length}\n"


@dataclass(frozen=True)
class UserNamespace:
    """The maps of a pod's user namespace: one range each, as Kubernetes allocates them."""

    uids: IdMap
    gids: IdMap

    def host_uid(self, inside: int) -> int:
        return self.uids.outside + inside - self.uids.inside

    def host_gid(self, inside: int) -> int:
        return self.gids.outside + inside - self.gids.inside


KINDS: frozenset[str] = frozenset(get_args(Kind))
PROC = Path("/proc")
HOSTNAME_MAX = 64  # HOST_NAME_MAX; the kernel's limit for a UTS namespace's nodename

_CLONE_FLAGS: dict[str, int] = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}
_CLONE_NEWUSER = pin_helper.CLONE_NEWUSER
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2


def pin(
    kinds: set[Kind],
    directory: Path,
    *,
    hostname: str | None = None,
    sysctls: dict[str, str] | None = None,
    userns: UserNamespace | None = None,
    proc: Path = PROC,
    timeout: float = 10.0,
) -> dict[str, Path]:
    """Create fresh namespaces of ``kinds`` and pin each on ``directory/<kind>``; return kind -> pinned file.

    With ``userns``, a user namespace with those maps is made first and pinned on ``directory/user`` (key
    ``"user"``), and the namespaces of ``kinds`` (which may then be empty) are owned by it: its root may set their
    sysctls, mount their sysfs and mqueue, name their host.

    ``hostname`` is set in the new UTS namespace, ``sysctls`` in the namespace each belongs to (see
    :func:`sysctl_kind`). Raises :class:`InvalidArgument` / :class:`InvalidSysctl` for bad input (checked before
    anything is created where possible), :class:`AlreadyExists` if a target is already pinned, and
    :class:`NamespaceError` for host failures. Nothing stays mounted or created when it raises.
    """
    unknown = set(kinds) - KINDS
    if (not kinds and userns is None) or unknown:
        raise InvalidArgument(f"namespace kinds must be a non-empty subset of {sorted(KINDS)}, got {sorted(kinds)}")
    writes, labels = _plan(set(kinds), hostname, sysctls or {}, proc, userns is not None)
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise NamespaceError(f"create namespace directory {directory}: {exc.strerror}") from exc
    targets: dict[str, Path] = {kind: directory / kind for kind in sorted(kinds)}
    if userns is not None:
        targets = {USER: directory / USER, **targets}
    for target in targets.values():
        if is_pinned(target, proc=proc):
            raise AlreadyExists(f"{target} already pins a namespace; unpin it first")

    flags = _CLONE_NEWUSER if userns is not None else 0
    for kind in kinds:
        flags |= _CLONE_FLAGS[kind]
    try:
        helper = subprocess.Popen(
            pin_helper.argv(flags, writes),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise NamespaceError(f"start namespace helper: {exc.strerror}") from exc
    created: list[Path] = []
    try:
        if userns is not None:
            pin_helper.map_user(helper, userns, proc, timeout)
        pin_helper.await_ready(helper, labels, timeout)
        for name, target in targets.items():
            _create_file(target)
            created.append(target)
            _bind_ns(proc / str(helper.pid) / "ns" / name, target, directory, proc)
    except BaseException:
        unpin(created)
        raise
    finally:
        pin_helper.stop(helper)
    return targets


def unpin(paths: Mapping[str, Path] | Iterable[Path]) -> None:
    """Detach and remove pinned namespace files; missing or already-unmounted ones are fine (idempotent)."""
    items = list(paths.values()) if isinstance(paths, Mapping) else list(paths)
    for item in items:
        path = Path(item)
        for _ in range(16):  # a file pinned twice has stacked mounts; detach them all
            if _libc.umount2(os.fsencode(path), _MNT_DETACH) == 0:
                continue
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more), or gone
                break
            raise NamespaceError(f"unmount pinned namespace {path}: {os.strerror(err)}")
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NamespaceError(f"remove pinned namespace file {path}: {exc.strerror}") from exc


def is_pinned(path: Path, *, proc: Path = PROC) -> bool:
    """Whether ``path`` is a mount point of an nsfs file (a pinned namespace) in our mount namespace."""
    real = os.path.realpath(path)
    return any(point == real and fstype == "nsfs" for point, _, fstype in _mountinfo(proc))


def make_private(directory: Path, *, proc: Path = PROC) -> None:
    """Make ``directory`` a mount point (a bind mount of itself, if it is not one) with private propagation."""
    target = os.fsencode(os.path.realpath(directory))
    if not any(point == os.fsdecode(target) for point, _, _ in _mountinfo(proc)):
        _mount(target, target, _MS_BIND | _MS_REC, f"bind-mount {directory} onto itself")
    _mount(None, target, _MS_PRIVATE, f"make {directory} a private mount")


def _plan(
    kinds: set[Kind], hostname: str | None, sysctls: Mapping[str, str], proc: Path, userns: bool = False
) -> tuple[list[tuple[str, str]], list[str]]:
    """Validate hostname and sysctls; return the helper's (path, value) writes and a label for each.

    In a user namespace the hostname is written first, as the host's root (only it may write
    /proc/sys/kernel/hostname), then the helper becomes the namespace's root (an empty path): its IPC sysctls
    are writable by it alone."""
    writes: list[tuple[str, str]] = []
    labels: list[str] = []
    if hostname is not None:
        if "uts" not in kinds:
            raise InvalidArgument(f"hostname {hostname!r} needs a pinned uts namespace")
        encoded = hostname.encode()
        if not encoded or len(encoded) > HOSTNAME_MAX or b"\n" in encoded or b"\0" in encoded:
            raise InvalidArgument(f"hostname {hostname!r}: must be 1-{HOSTNAME_MAX} bytes without newline or NUL")
        writes.append((str(proc / "sys/kernel/hostname"), hostname))
        labels.append(f"hostname {hostname!r}")
    if userns:
        writes.append(("", ""))
        labels.append("become the root of the pod's user namespace")
    for name, value in sysctls.items():
        parts = sysctl_parts(name)
        kind = sysctl_kind(name)
        if kind is None:
            raise InvalidSysctl(
                f"sysctl {name}: not namespaced, refusing to set it for a pod (it would change the host)"
            )
        if kind not in kinds:
            raise InvalidSysctl(f"sysctl {name}: lives in the {kind} namespace, which this pod does not pin")
        if "\n" in value.rstrip("\n") or "\0" in value:
            raise InvalidSysctl(f"sysctl {name}: value {value!r} contains a newline or NUL")
        writes.append((str(proc.joinpath("sys", *parts)), value))
        labels.append(f"sysctl {name}={value!r}")
    return writes, labels


def _create_file(target: Path) -> None:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o444)
    except OSError as exc:
        raise NamespaceError(f"create pin file {target}: {exc.strerror}") from exc
    os.close(fd)


def _bind_ns(source: Path, target: Path, directory: Path, proc: Path) -> None:
    what = f"bind-mount {source} onto {target}"
    try:
        _mount(os.fsencode(source), os.fsencode(target), _MS_BIND, what)
    except NamespaceError as exc:
        if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno != errno.EINVAL:
            raise
        make_private(directory, proc=proc)
        _mount(os.fsencode(source), os.fsencode(target), _MS_BIND, what + f" (after making {directory} private)")


def _mount(source: bytes | None, target: bytes, flags: int, what: str) -> None:
    if _libc.mount(source, target, None, flags, None) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"{what}: {os.strerror(err)}") from OSError(err, os.strerror(err))


def _mountinfo(proc: Path) -> list[tuple[str, list[str], str]]:
    """(mount point, optional fields such as ``shared:1``, fs type) per line of ``<proc>/self/mountinfo``."""
    entries = []
    for line in (proc / "self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        entries.append((_unescape(fields[4]), fields[6:], right.split()[0]))
    return entries


def _unescape(field: str) -> str:
    """mountinfo octal escapes (``\\040`` for a space) back to characters."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


class _Libc:
    """Typed access to the two libc calls we need; errno is read with ctypes.get_errno()."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._mount = libc.mount
        self._mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        self._mount.restype = ctypes.c_int
        self._umount2 = libc.umount2
        self._umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._umount2.restype = ctypes.c_int

    def mount(self, source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data: None) -> int:
        return int(self._mount(source, target, fstype, flags, data))

    def umount2(self, target: bytes, flags: int) -> int:
        return int(self._umount2(target, flags))


_libc = _Libc()
