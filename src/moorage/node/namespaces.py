"""Pinned pod namespaces: net, ipc and uts namespaces that live on without any process, as CRI-O's pinns makes them.

For a pod in a user namespace (``userns``) the helper first unshares the user namespace alone and waits while
the parent writes its uid_map and gid_map (:func:`_map_user`), then makes the others inside it, so they are owned
by it; the user namespace is pinned with them as ``user``.

:func:`pin` starts a short-lived helper (the static C program ``pinns`` when built, ~1 ms; else this Python,
``-I -S -c``: without site packages it starts in ~25 ms) that unshares the namespaces, brings up ``lo`` in a new
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
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, get_args

from moorage import defaults
from moorage.errors import AlreadyExists, InvalidArgument, MoorageError
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
PINNS_SOURCE = "src/moorage/node/pinns/pinns.c"
PINNS = defaults.helper("pinns")
"""The C namespace helper (src/moorage/node/pinns/pinns.c) as ``make`` builds it, or as the package installs it."""
HOSTNAME_MAX = 64  # HOST_NAME_MAX; the kernel's limit for a UTS namespace's nodename

_CLONE_FLAGS: dict[str, int] = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}
_CLONE_NEWUSER = 0x10000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2

# Runs in the helper. argv[1]: {"flags": int, "writes": [[path, value], ...]}. Prints one JSON line: {"ready": true}
# or {"error": index-of-write, -1 for unshare or -2 for lo, "errno": n, "strerror": s}, then waits for stdin EOF.
_HELPER = """
import ctypes, json, os, sys
cfg = json.loads(sys.argv[1])
def fail(index, err, msg):
    sys.stdout.write(json.dumps({"error": index, "errno": err, "strerror": msg}) + "\\n")
    sys.stdout.flush()
    sys.exit(1)
libc = ctypes.CDLL(None, use_errno=True)
if cfg["flags"] & 0x10000000:  # a user namespace first, alone; the parent writes its maps, then says go
    if libc.unshare(0x10000000) != 0:
        e = ctypes.get_errno()
        fail(-1, e, os.strerror(e))
    sys.stdout.write('{"userns": true}\\n')
    sys.stdout.flush()
    if not sys.stdin.buffer.read(1):
        sys.exit(1)
    cfg["flags"] &= ~0x10000000
if cfg["flags"] and libc.unshare(cfg["flags"]) != 0:
    e = ctypes.get_errno()
    fail(-1, e, os.strerror(e))
if cfg["flags"] & 0x40000000:  # a new net namespace: bring lo up (SIOCGIFFLAGS, SIOCSIFFLAGS | IFF_UP)
    import fcntl, socket, struct
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack("16sH22x", fcntl.ioctl(s, 0x8913, struct.pack("16sH22x", b"lo", 0)))[1]
            fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))
    except OSError as exc:
        fail(-2, exc.errno, exc.strerror)
for index, (path, value) in enumerate(cfg["writes"]):
    if not path:  # become the user namespace's root: its IPC sysctls are writable by it alone
        if libc.setresgid(0, 0, 0) != 0 or libc.setresuid(0, 0, 0) != 0:
            e = ctypes.get_errno()
            fail(index, e, os.strerror(e))
        continue
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        fail(index, exc.errno, exc.strerror)
sys.stdout.write('{"ready": true}\\n')
sys.stdout.flush()
sys.stdin.read()
"""


class NamespaceError(MoorageError):
    """Creating, pinning or unpinning a namespace failed on the host (INTERNAL): the message names the path."""


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
            _helper_argv(flags, writes),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise NamespaceError(f"start namespace helper: {exc.strerror}") from exc
    created: list[Path] = []
    try:
        if userns is not None:
            _map_user(helper, userns, proc, timeout)
        _await_ready(helper, labels, timeout)
        for name, target in targets.items():
            _create_file(target)
            created.append(target)
            _bind_ns(proc / str(helper.pid) / "ns" / name, target, directory, proc)
    except BaseException:
        unpin(created)
        raise
    finally:
        _stop(helper)
    return targets


def _helper_argv(flags: int, writes: list[tuple[str, str]]) -> list[str]:
    """The C helper when it is built (``make`` builds it; an interpreter start costs ~25 ms a pod), else this
    Python without site packages running :data:`_HELPER`. Both take the same work and answer the same way."""
    if os.access(PINNS, os.X_OK):
        return [str(PINNS), str(flags), *(item for write in writes for item in write)]
    return [sys.executable, "-I", "-S", "-c", _HELPER, json.dumps({"flags": flags, "writes": writes})]


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


def _map_user(helper: subprocess.Popen[bytes], userns: UserNamespace, proc: Path, timeout: float) -> None:
    """Wait for the helper's new user namespace, write its maps, and let it go on (one line on its stdin)."""
    report = _report(helper, timeout)
    if not report.get("userns"):
        _raise(report, [])
    for name, entry in (("uid_map", userns.uids), ("gid_map", userns.gids)):
        path = proc / str(helper.pid) / name
        try:
            path.write_text(entry.line())
        except OSError as exc:
            raise NamespaceError(f"write {entry.line().strip()!r} to {path}: {exc.strerror}") from exc
    assert helper.stdin is not None
    helper.stdin.write(b"\n")
    helper.stdin.flush()


def _await_ready(helper: subprocess.Popen[bytes], labels: list[str], timeout: float) -> None:
    report = _report(helper, timeout)
    if not report.get("ready"):
        _raise(report, labels)


def _report(helper: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The helper's next JSON line."""
    assert helper.stdout is not None
    assert helper.stderr is not None
    ready, _, _ = select.select([helper.stdout], [], [], timeout)
    if not ready:
        raise NamespaceError(f"namespace helper (pid {helper.pid}) not ready after {timeout}s")
    line = helper.stdout.readline()
    if not line:
        helper.wait()
        stderr = helper.stderr.read().decode(errors="replace").strip()
        raise NamespaceError(f"namespace helper exited with status {helper.returncode}: {stderr or 'no output'}")
    report: dict[str, Any] = json.loads(line)
    return report


def _raise(report: dict[str, Any], labels: list[str]) -> NoReturn:
    index, err, strerror = report["error"], report["errno"], report["strerror"]
    if index == -2:
        raise NamespaceError(f"bring up lo in the new network namespace: {strerror}")
    if index < 0:
        hint = " (needs CAP_SYS_ADMIN)" if err == errno.EPERM else ""
        raise NamespaceError(f"unshare namespaces: {strerror}{hint}")
    label = labels[index]
    if err == errno.ENOENT:
        raise InvalidSysctl(f"{label}: no such key in this kernel")
    cls = InvalidSysctl if label.startswith("sysctl") else InvalidArgument
    raise cls(f"{label}: the kernel refused it: {strerror}")


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


def _stop(helper: subprocess.Popen[bytes]) -> None:
    """Close the helper's stdin (it exits on EOF) and reap it; kill it if it lingers."""
    try:
        if helper.stdin is not None:
            helper.stdin.close()
        helper.wait(timeout=2)
    except (subprocess.TimeoutExpired, OSError):
        helper.kill()
        helper.wait()
    finally:
        for stream in (helper.stdout, helper.stderr):
            if stream is not None:
                stream.close()


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
