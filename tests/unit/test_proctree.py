"""Killing a process tree (node/proctree.py): /proc stat parsing on a fake /proc, and real process trees."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from moorage.node import proctree


def fake_proc(tmp_path: Path, entries: dict[int, str]) -> Path:
    for pid, stat in entries.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat)
    (tmp_path / "self").mkdir()
    return tmp_path


def test_stat_is_parsed_past_a_command_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {7: "7 (a) b (c) S 3 7 5 0 -1 0\n", 8: "8 (x"})
    assert proctree.processes(proc) == {7: proctree.ProcInfo(7, "S", 3, 5)}
    assert proctree.read_stat(9, proc) is None


def test_the_tree_is_the_descendants_and_the_session() -> None:
    table = {
        p.pid: p
        for p in [
            proctree.ProcInfo(10, "S", 1, 10),  # the command, a session leader
            proctree.ProcInfo(11, "S", 10, 10),  # its child
            proctree.ProcInfo(12, "S", 11, 12),  # a grandchild in a session of its own
            proctree.ProcInfo(13, "S", 2, 10),  # an orphan of the session, reparented to the container's init
            proctree.ProcInfo(2, "S", 1, 2),  # the container's init
            proctree.ProcInfo(14, "S", 2, 14),  # another process of the container
        ]
    }
    assert proctree.tree(10, table, sid=10) == {10, 11, 12, 13}
    assert proctree.tree(10, table) == {10, 11, 12}
    assert proctree.tree(99, table, also={11}) == {11, 12}


def alive(pid: int) -> bool:
    info = proctree.read_stat(pid)
    return info is not None and info.state != "Z"


def test_a_real_tree_is_killed_with_its_orphans_and_escapees() -> None:
    script = "sleep 4501 & (sleep 4502 &); setsid sleep 4503 & echo $!; wait"
    sh = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert sh.stdout is not None
        escapee = int(sh.stdout.readline())
        time.sleep(0.2)
        table = proctree.processes()
        sleeps = {p for p in table if _cmdline(p).startswith("sleep 450")}
        assert len(sleeps) == 3
        assert escapee in sleeps
        killed = proctree.kill_tree(sh.pid)
        assert sleeps | {sh.pid} <= killed
        assert sh.wait(5) == -9
        deadline = time.monotonic() + 5
        while any(alive(p) for p in sleeps) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in sleeps)
    finally:
        sh.kill()
        sh.wait()


def test_our_own_session_is_spared() -> None:
    child = subprocess.Popen(["sleep", "4504"])  # in the test's own session
    bystander = subprocess.Popen(["sleep", "4505"])
    try:
        assert proctree.kill_tree(child.pid) == {child.pid}
        assert child.wait(5) == -9
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_a_pid_is_the_commands_only_if_its_process_started_before_the_pid_was_written() -> None:
    """What an exec's kill checks: a process started after its pid file was written holds a reused pid."""
    before = time.time() - 1.0
    child = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.1)
        written = time.time()
        assert proctree.started_by(child.pid, written)
        assert not proctree.started_by(child.pid, before)  # "written" a second before it started: a reused pid
    finally:
        child.kill()
        child.wait()
    assert not proctree.started_by(child.pid, written)  # gone
