"""Killing a command together with everything it started: what an exec that timed out or lost its client leaves.

An exec'd command does not get a cgroup of its own (it joins the container's), so its processes are found by
their relations in ``/proc``: its descendants (by parent pid) and the members of its session. The session also
holds what the command started and then left: a child whose parent exited is reparented to the container's init
but keeps its session (runc makes each exec'd process a session leader; crun leaves it in the session of the
runtime's client, which moorage starts in a session of its own). Only a process that both left the session
(setsid) and lost its parent escapes.

Killing is two-phase so nothing forks away meanwhile: every process found is sent SIGSTOP and waited for until
it is stopped (a stopped process cannot fork), then ``/proc`` is read again for new ones, until a round finds
none; then all of them get SIGKILL. The caller's own session and process, and pid 1, are never included.

Lifecycle::

    killed = kill_tree(exec_pid)            # the pids that were sent SIGKILL
    killed = kill_tree(pid, proc=Path(...)) # another /proc (tests)
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
STOP_WAIT = 2.0
"""Seconds to wait for the processes of one round to stop (one in uninterruptible sleep may take a while)."""


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    state: str
    ppid: int
    sid: int


def read_stat(pid: int, proc: Path = PROC) -> ProcInfo | None:
    """A process's state, parent and session from ``<proc>/<pid>/stat``; None when it is gone."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses, so split after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 4:
        return None
    return ProcInfo(pid, fields[0], int(fields[1]), int(fields[3]))


def processes(proc: Path = PROC) -> dict[int, ProcInfo]:
    """Every process in ``proc`` (as this pid namespace sees them)."""
    found = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (info := read_stat(int(entry.name), proc)) is not None:
            found[info.pid] = info
    return found


def tree(pid: int, table: dict[int, ProcInfo], *, also: set[int] | None = None, sid: int = 0) -> set[int]:
    """``pid`` (if alive) and ``also``, the members of session ``sid`` (0: none), and all their descendants."""
    found = ({pid} | (also or set())) & table.keys()
    if sid > 0:
        found |= {p for p, info in table.items() if info.sid == sid}
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def started_by(pid: int, moment: float, proc: Path = PROC) -> bool:
    """Whether process ``pid`` exists and was started no later than ``moment`` (wall-clock seconds, e.g. the
    mtime of the file its pid was written to): a pid the command's exit freed and the kernel gave to a newer
    process fails this, so it is never killed in the command's place. The start time has the resolution of the
    clock tick (10 ms), allowed for."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return False
    ticks = int(text[text.rfind(")") + 2 :].split()[19])  # field 22, starttime: clock ticks after boot
    started = ticks / os.sysconf("SC_CLK_TCK")
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - (time.time() - moment)
    return started <= since_boot + 2 / os.sysconf("SC_CLK_TCK")


def kill_tree(pid: int, proc: Path = PROC, *, keep: frozenset[int] = frozenset()) -> set[int]:
    """SIGKILL ``pid``, its descendants and its session, stopping them all first (see the module docstring),
    sparing ``keep`` (the runtime's client, which reaps ``pid``). Returns the pids that were signalled."""
    spare = {1, os.getpid(), *keep}
    table = processes(proc)
    root = table.get(pid)
    sid = root.sid if root is not None and root.sid != os.getsid(0) else 0  # never our own session
    stopped: set[int] = set()
    while new := tree(pid, table, also=stopped, sid=sid) - spare - stopped:
        for p in new:
            _signal(p, signal.SIGSTOP)
        stopped |= new
        _wait_stopped(new, proc)
        table = processes(proc)
    for p in stopped:
        _signal(p, signal.SIGKILL)
    return stopped


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_stopped(pids: set[int], proc: Path) -> None:
    deadline = time.monotonic() + STOP_WAIT
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        for p in list(waiting):
            info = read_stat(p, proc)
            if info is None or info.state in "tTZX":
                waiting.discard(p)
        if waiting:
            time.sleep(0.005)
