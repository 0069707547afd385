"""Our pause program: built by scripts/build-static, exits 0 on SIGTERM/SIGINT, reaps orphans as PID 1."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-static"
SOURCE = REPO / "src" / "moorage" / "runtime" / "pause" / "pause.c"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="building pause needs gcc")


@pytest.fixture(scope="module")
def pause(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pause") / "pause"
    printed = subprocess.run([str(SCRIPT), str(SOURCE), str(out)], check=True, capture_output=True, text=True).stdout
    assert printed.strip() == str(out)
    return out


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_build_is_idempotent_and_static(pause: Path) -> None:
    mtime = pause.stat().st_mtime_ns
    printed = subprocess.run([str(SCRIPT), str(SOURCE), str(pause)], check=True, capture_output=True, text=True).stdout
    assert printed.strip() == str(pause)
    assert pause.stat().st_mtime_ns == mtime
    assert b"INTERP" not in subprocess.run(["readelf", "-l", str(pause)], check=True, capture_output=True).stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exits_zero_on_stop_signal(pause: Path, procs: list[subprocess.Popen[bytes]], sig: signal.Signals) -> None:
    proc = subprocess.Popen([str(pause)])
    procs.append(proc)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.3)
    proc.send_signal(sig)
    assert proc.wait(timeout=2) == 0


def children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def zombies_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None, reason="needs util-linux")
def test_reaps_orphans_as_pid_1(pause: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    try:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", str(pause)])
    except PermissionError:
        pytest.skip("unshare --pid needs root")
    procs.append(proc)
    deadline = time.monotonic() + 5
    while not children(proc.pid):
        assert time.monotonic() < deadline, "unshare did not start pause"
        time.sleep(0.02)
    (init,) = children(proc.pid)
    # sh backgrounds a short sleep and exits: the sleep is orphaned onto pause, PID 1 of the namespace.
    subprocess.run(["nsenter", f"--target={init}", "--pid", "--", "sh", "-c", "sleep 0.2 & exit 0"], check=True)
    time.sleep(0.8)
    assert zombies_of(init) == []
    assert proc.poll() is None
    subprocess.run(["kill", "-TERM", str(init)], check=True)
    assert proc.wait(timeout=2) == 0
