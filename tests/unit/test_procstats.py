"""Counting a container's threads, descriptors and sockets, and reading its init's limits, on a fake /proc and
on this test's own process."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from moorage.node.procstats import ProcessCounts, count_processes, open_files_soft_limit

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
Max processes             unlimited            unlimited            processes
"""


def fake_process(proc: Path, pid: int, threads: int, fds: dict[str, str]) -> None:
    for task in range(threads):
        (proc / str(pid) / "task" / str(pid + task)).mkdir(parents=True)
    (proc / str(pid) / "fd").mkdir()
    for name, target in fds.items():
        (proc / str(pid) / "fd" / name).symlink_to(target)
    (proc / str(pid) / "limits").write_text(LIMITS)


def test_counts_sum_over_the_processes_that_exist(tmp_path: Path) -> None:
    fake_process(tmp_path, 10, 1, {"0": "/dev/null", "1": "pipe:[77]", "3": "socket:[1234]"})
    fake_process(tmp_path, 20, 3, {"0": "/dev/null", "4": "socket:[99]", "5": "socket:[100]"})
    counts = count_processes((10, 20, 30), tmp_path)  # 30 exited meanwhile
    assert counts == ProcessCounts(processes=2, threads=4, file_descriptors=6, sockets=3)
    assert count_processes((), tmp_path) == ProcessCounts(0, 0, 0, 0)


def test_soft_open_files_limit(tmp_path: Path) -> None:
    fake_process(tmp_path, 10, 1, {})
    assert open_files_soft_limit(10, tmp_path) == 1024
    (tmp_path / "10" / "limits").write_text(LIMITS.replace("1024   ", "unlimited"))
    assert open_files_soft_limit(10, tmp_path) is None
    assert open_files_soft_limit(11, tmp_path) is None


def test_this_process_as_the_kernel_shows_it() -> None:
    """A socket and a thread of our own show up in the real /proc's counts."""
    before = count_processes((os.getpid(),))
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    with socket.socket() as _:
        worker.start()
        try:
            during = count_processes((os.getpid(),))
        finally:
            stop.set()
            worker.join()
    assert during.threads == before.threads + 1
    assert during.sockets == before.sockets + 1
    assert during.file_descriptors >= before.file_descriptors + 1
