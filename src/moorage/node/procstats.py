"""What a container's processes hold, counted from ``/proc`` as cAdvisor counts it: threads, open file
descriptors, sockets among them, and the init process's soft limit on open files.

The pids come from the container's ``cgroup.procs``, in the pid namespace of this process's ``/proc``; a process
that exits while it is counted is skipped, so the counts are a snapshot, never an error. ``proc`` stands for
``/proc`` (tests point it at a tree of their own).

Lifecycle::

    counts = count_processes((1234, 1240))   # ProcessCounts(processes=2, threads=3, ...)
    soft = open_files_soft_limit(1234)       # 1048576, or None (unlimited, or the process is gone)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessCounts:
    processes: int
    threads: int
    file_descriptors: int
    sockets: int


def count_processes(pids: Iterable[int], proc: Path = PROC) -> ProcessCounts:
    """Threads (``/proc/<pid>/task`` entries), open descriptors (``fd`` entries) and the sockets among them
    (descriptors linking to ``socket:[inode]``) of the processes ``pids`` that still exist."""
    processes = threads = fds = sockets = 0
    for pid in pids:
        base = proc / str(pid)
        try:
            tasks = len(os.listdir(base / "task"))
            names = os.listdir(base / "fd")
        except OSError:
            continue  # gone meanwhile (or not ours to read)
        processes, threads, fds = processes + 1, threads + tasks, fds + len(names)
        for name in names:
            try:
                target = os.readlink(base / "fd" / name)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:"):
                sockets += 1
    return ProcessCounts(processes, threads, fds, sockets)


def open_files_soft_limit(pid: int, proc: Path = PROC) -> int | None:
    """The soft ``Max open files`` of ``/proc/<pid>/limits``; None if it is unlimited or the process is gone."""
    try:
        text = (proc / str(pid) / "limits").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return int(soft) if soft.isdigit() else None
    return None
