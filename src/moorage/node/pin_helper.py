"""The short-lived process that makes a pod's namespaces (:func:`moorage.node.namespaces.pin` drives it).

Two implementations do the same work and answer the same way: the static C program ``pinns`` when it is built
(``make``; about 1 ms a pod) and else this Python, started without site packages (about 25 ms). Given clone flags
and a list of (path, value) writes, it unshares the namespaces (a user namespace first and alone, whose maps the
parent writes while it waits: :func:`map_user`), brings up ``lo`` in a new net namespace, writes the hostname
and sysctls from inside, prints one JSON line (``{"ready": true}`` or the failed step's errno) and waits for
stdin EOF, so it never outlives the daemon's call.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from moorage import defaults
from moorage.errors import InvalidArgument, MoorageError
from moorage.node.sysctls import InvalidSysctl

if TYPE_CHECKING:
    from pathlib import Path

    from moorage.node.namespaces import UserNamespace

PINNS_SOURCE = "src/moorage/node/pinns/pinns.c"
PINNS = defaults.helper("pinns")
"""The C namespace helper (src/moorage/node/pinns/pinns.c) as ``make`` builds it, or as the package installs it."""
CLONE_NEWUSER = 0x10000000

# Runs in the helper. argv[1]: {"flags": int, "writes": [[path, value], ...]}. Prints one JSON line: {"ready": true}
# or {"error": index-of-write, -1 for unshare or -2 for lo, "errno": n, "strerror": s}, then waits for stdin EOF.
HELPER_SOURCE = """
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


def argv(flags: int, writes: list[tuple[str, str]]) -> list[str]:
    """The C helper when it is built (``make`` builds it; an interpreter start costs ~25 ms a pod), else this
    Python without site packages running :data:`HELPER_SOURCE`. Both take the same work and answer the same way."""
    if os.access(PINNS, os.X_OK):
        return [str(PINNS), str(flags), *(item for write in writes for item in write)]
    return [sys.executable, "-I", "-S", "-c", HELPER_SOURCE, json.dumps({"flags": flags, "writes": writes})]


def map_user(helper: subprocess.Popen[bytes], userns: UserNamespace, proc: Path, timeout: float) -> None:
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


def await_ready(helper: subprocess.Popen[bytes], labels: list[str], timeout: float) -> None:
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


def stop(helper: subprocess.Popen[bytes]) -> None:
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
