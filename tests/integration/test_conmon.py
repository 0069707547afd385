"""conmon + runc/crun against real binaries: create, start, logs, exit files, kill, and a failing create.

Each test gets its own runtime root, state dir and bundle with a unique cgroup path; the fixture deletes
every container, kills every conmon it started and removes the cgroups, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from moorage.errors import DeadlineExceeded, MoorageError, NotFound
from moorage.node import cgroupinfo
from moorage.runtime.containers.conmon import ConmonPaths, conmon_pid, create_container, read_exit
from moorage.runtime.containers.handlers import cgroup_compatible
from moorage.runtime.containers.oci import OciRuntime
from tests.fixtures import cgroups

pytestmark = pytest.mark.integration

CRI_LINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)"


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None or os.geteuid() != 0:
        pytest.skip(f"needs root and {binary}")
    return path


@dataclass
class Env:
    runtime: OciRuntime
    conmon: str
    tmp: Path
    state_dir: Path
    cgroup_prefix: str

    def bundle(self, cid: str, args: list[str]) -> Path:
        """A bundle with a static busybox rootfs running ``args``, in cgroup ``/<prefix>-<cid>``."""
        bundle = self.tmp / "bundles" / cid
        (bundle / "rootfs" / "bin").mkdir(parents=True)
        shutil.copy2("/bin/busybox", bundle / "rootfs" / "bin" / "busybox")
        (bundle / "rootfs" / "bin" / "sh").symlink_to("busybox")
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["args"] = args
        spec["process"]["terminal"] = False
        spec["linux"]["cgroupsPath"] = f"/{self.cgroup_prefix}-{cid}"
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    async def create(self, cid: str, args: list[str]) -> int:
        return await create_container(
            self.conmon,
            self.runtime,
            cid=cid,
            name=f"test-{cid}",
            bundle=self.bundle(cid, args),
            state_dir=self.state_dir,
            log_path=self.log_path(cid),
        )

    def log_path(self, cid: str) -> Path:
        return self.tmp / "logs" / f"{cid}.log"

    async def wait_exit(self, cid: str, timeout: float = 10.0) -> int:
        async with asyncio.timeout(timeout):
            while (code := read_exit(self.state_dir / "exits", cid)) is None:
                await asyncio.sleep(0.02)
        return code


def live_conmons(state_dir: Path) -> list[int]:
    """Pids of live (non-zombie) conmon processes started with files under ``state_dir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            zombie = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if (
            not zombie
            and cmdline
            and cmdline[0].endswith(b"conmon")
            and any(str(state_dir).encode() in a for a in cmdline)
        ):
            pids.append(int(proc.name))
    return pids


def _cleanup(env: Env) -> None:
    runtime = env.runtime
    out = subprocess.run(runtime.argv("list", "--format", "json"), capture_output=True, text=True, check=False)
    for item in json.loads(out.stdout or "null") or []:
        subprocess.run(runtime.argv("delete", "--force", item["id"]), capture_output=True, check=False)
    for pid in live_conmons(env.state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    names = {cg.name for hierarchy in cgroups.hierarchies() for cg in hierarchy.glob(f"{env.cgroup_prefix}-*")}
    for name in names:
        cgroups.remove(f"/{name}")  # waits while a just-killed task lingers
    shutil.rmtree(env.tmp, ignore_errors=True)


def _hybrid_crun_wrapper(crun: str, tmp: Path) -> str:
    """crun 1.8 refuses a hybrid host whose cgroup2 mount still owns a controller (here hugetlb, not mounted as
    v1): run it the way the daemon does, through a wrapper without that mount."""
    return cgroup_compatible(crun, cgroupinfo.detect(), tmp / "crun-v1")


@pytest.fixture(params=["runc", "crun"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    runtime_path = _require(str(request.param))
    if request.param == "crun":
        runtime_path = _hybrid_crun_wrapper(runtime_path, tmp_path)
    conmon = _require("conmon")
    e = Env(
        runtime=OciRuntime(runtime_path, tmp_path / "runtime-root"),
        conmon=conmon,
        tmp=tmp_path,
        state_dir=tmp_path / "state",
        cgroup_prefix=f"moorage-test-{secrets.token_hex(4)}",
    )
    try:
        yield e
    finally:
        _cleanup(e)


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def test_create_start_kill(env: Env) -> None:
    async def scenario() -> None:
        pid = await env.create("sleeper", ["/bin/busybox", "sleep", "30"])
        state = await env.runtime.state("sleeper")
        assert state is not None
        assert state["status"] == "created"
        assert state["pid"] == pid

        monitor = conmon_pid(ConmonPaths(env.state_dir, "sleeper"))
        assert monitor is not None
        assert _ppid(pid) == monitor  # conmon is the subreaper that parents the container
        assert _ppid(monitor) != os.getpid()  # and it is not our child

        await env.runtime.start("sleeper")
        state = await env.runtime.state("sleeper")
        assert state is not None
        assert state["status"] == "running"
        assert Path(f"/proc/{pid}").exists()
        assert read_exit(env.state_dir / "exits", "sleeper") is None

        await env.runtime.update("sleeper", {"pids": {"limit": 42}})
        assert cgroups.read(cgroups.directory("pids", f"/{env.cgroup_prefix}-sleeper") / "pids.max") == "42"

        await env.runtime.kill("sleeper", signal.SIGKILL)
        assert await env.wait_exit("sleeper") == 137
        assert (env.state_dir / "containers" / "sleeper" / "exit").read_text() == "137"
        state = await env.runtime.state("sleeper")
        assert state is not None
        assert state["status"] == "stopped"
        await env.runtime.delete("sleeper")
        assert await env.runtime.state("sleeper") is None
        async with asyncio.timeout(5):  # conmon exits once it has written the exit file
            while live_conmons(env.state_dir):
                await asyncio.sleep(0.02)

    asyncio.run(scenario())


def test_logs_and_exit_code(env: Env) -> None:
    async def scenario() -> None:
        await env.create("hello", ["/bin/sh", "-c", "echo hello; echo world; echo oops >&2; exit 3"])
        await env.runtime.start("hello")
        assert await env.wait_exit("hello") == 3

    asyncio.run(scenario())
    lines = env.log_path("hello").read_text().splitlines()
    assert re.match(rf"^{CRI_LINE} stdout F hello$", lines[0]), lines
    stdout = [line.split(" ", 3)[3] for line in lines if " stdout F " in line]
    stderr = [line.split(" ", 3)[3] for line in lines if " stderr F " in line]
    assert stdout == ["hello", "world"]
    assert stderr == ["oops"]
    assert all(re.match(rf"^{CRI_LINE} (stdout|stderr) F ", line) for line in lines), lines


def test_bad_bundle_fails_and_leaves_nothing(env: Env) -> None:
    async def scenario() -> None:
        with pytest.raises(MoorageError) as info:
            await env.create("broken", ["/bin/nope"])
        message = info.value.message
        assert "create container broken" in message
        assert "/bin/nope" in message
        assert re.search(r"no such file or directory|not found", message, re.IGNORECASE), message
        assert await env.runtime.list_containers() == []
        assert await env.runtime.state("broken") is None

    asyncio.run(scenario())
    listed = subprocess.run(env.runtime.argv("list", "-q"), capture_output=True, text=True, check=True)
    assert listed.stdout.strip() == ""
    assert live_conmons(env.state_dir) == []
    assert not (env.state_dir / "containers" / "broken").exists()
    assert not (env.state_dir / "exits" / "broken").exists()
    assert not env.log_path("broken").exists()


def test_runtime_errors_are_typed(env: Env) -> None:
    async def scenario() -> None:
        assert await env.runtime.state("ghost") is None
        with pytest.raises(NotFound):
            await env.runtime.kill("ghost", signal.SIGTERM)
        with pytest.raises(NotFound):
            await env.runtime.delete("ghost")
        await env.runtime.delete("ghost", force=True)

    asyncio.run(scenario())


def test_create_timeout_rolls_back(env: Env) -> None:
    """A runtime whose create hangs (a wrapper around the real binary): the deadline fires, nothing is left."""
    slow = env.tmp / "slow-runtime"
    slow.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = create ] && sleep 2; done\nexec {env.runtime.path} "$@"\n')
    slow.chmod(0o755)
    real = env.runtime
    env.runtime = OciRuntime(str(slow), real.root)

    async def scenario() -> None:
        with pytest.raises(DeadlineExceeded, match=r"create container slow: conmon did not report within 0\.5s"):
            await create_container(
                env.conmon,
                env.runtime,
                cid="slow",
                name="slow",
                bundle=env.bundle("slow", ["/bin/busybox", "sleep", "30"]),
                state_dir=env.state_dir,
                log_path=env.log_path("slow"),
                timeout=0.5,
            )
        assert live_conmons(env.state_dir) == []
        await asyncio.sleep(2)  # let an orphaned create finish, if one survived
        assert await real.list_containers() == []

    asyncio.run(scenario())
    env.runtime = real
    assert not (env.state_dir / "containers" / "slow").exists()
    assert not (env.state_dir / "exits" / "slow").exists()
