"""ExecSync: run a command in a running container and return its exit code and output (the kubelet's exec
probes), and UpdateContainerResources.

The command runs through ``<runtime> exec`` with the container's own process settings (user, env, cwd,
capabilities, seccomp) and the requested argv. stdout and stderr together keep their first :data:`OUTPUT_CAP`
bytes, whichever stream they come on, so the whole answer fits the kubelet's 16 MiB receive limit (CRI-O's fix
for CVE-2022-1708 bounds both streams together at 16 MiB with conmon's ``--log-global-size-max``; containerd's
for CVE-2022-31030 caps each stream at 16 MiB, so its answer can reach 32 MiB, which the kubelet refuses); the
rest is read and dropped so the command never blocks on a full pipe, and the cut is logged.

On timeout (or when the caller goes away) the command and everything it started in the container are killed
(:func:`moorage.node.proctree.kill_tree`; runc exec'd processes join the container's cgroup, so they are found
in /proc), and DEADLINE_EXCEEDED returned, which the kubelet reads as the probe's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from moorage.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, MoorageError, NotFound
from moorage.node import proctree
from moorage.node.proctree import kill_tree
from moorage.runtime.containers.oci import OciRuntime, parse_runtime_stderr

log = structlog.get_logger(__name__)

KUBELET_MAX_RECEIVE = 16 << 20
"""The kubelet's limit on a CRI message it receives (its remote runtime client's maxMsgSize)."""
OUTPUT_CAP = KUBELET_MAX_RECEIVE - 1024
"""stdout and stderr bytes an ExecSync answer keeps, both together: the kubelet's limit less room for the
message's own framing (two length-prefixed fields and the exit code: under 30 bytes)."""
PID_FILE_WAIT = 10.0
"""Seconds a kill waits for the runtime to write the pid of a command it is still starting."""
RUNTIME_EXIT_WAIT = 2.0
"""Seconds a kill waits for the runtime's client to reap the killed command and exit, before killing it too."""
READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


async def exec_sync(
    runtime: OciRuntime, container_id: str, bundle: Path, cmd: Sequence[str], timeout: int
) -> ExecResult:
    if not cmd:
        raise InvalidArgument("cmd is required")
    process_file, pid_file = write_process(bundle, cmd)
    try:
        proc = await asyncio.create_subprocess_exec(
            *runtime.exec_argv(container_id, process_file, pid_file=pid_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # crun leaves the command in this session: kill_tree finds it by it
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        budget = _Budget(OUTPUT_CAP)
        reading = asyncio.gather(_capped(proc.stdout, budget), _capped(proc.stderr, budget), proc.wait())
        try:
            stdout, stderr, code = await asyncio.wait_for(asyncio.shield(reading), timeout or None)
        except TimeoutError:
            await kill_exec(pid_file, proc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reading, 10)
            raise DeadlineExceeded(
                f"command {list(cmd)} timed out after {timeout} s in container {container_id}"
            ) from None
        except asyncio.CancelledError:  # the caller went away (its deadline passed): the command goes too
            await kill_exec(pid_file, proc)
            raise
    finally:
        process_file.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
    if code != 0 and b"exec failed" in stderr:
        raise _exec_failed(container_id, cmd[0], parse_runtime_stderr(stderr))
    if budget.dropped:
        log.warning(
            "exec output cut to fit the kubelet's message limit",
            container=container_id,
            cmd=list(cmd)[:8],
            kept=OUTPUT_CAP,
            dropped=budget.dropped,
        )
    return ExecResult(code, stdout, stderr)


class _Budget:
    """Output bytes left for both streams together; what comes past it is counted and dropped."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.dropped = 0

    def take(self, chunk: bytes) -> bytes:
        kept = chunk[: self.left]
        self.left -= len(kept)
        self.dropped += len(chunk) - len(kept)
        return kept


async def _capped(stream: asyncio.StreamReader, budget: _Budget) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(READ_CHUNK):
        kept += budget.take(chunk)
    return bytes(kept)


def write_process(
    bundle: Path, cmd: Sequence[str], terminal: bool = False, size: tuple[int, int] | None = None
) -> tuple[Path, Path]:
    """The exec's OCI process (the container's own, with ``cmd``) written beside the bundle's config, and where
    the runtime is to write the command's pid. ``size`` (width, height) is the terminal's size from the start."""
    spec = json.loads((bundle / "config.json").read_text())
    process = dict(spec["process"], args=list(cmd), terminal=terminal)
    if terminal and size is not None:
        process["consoleSize"] = {"width": size[0], "height": size[1]}
    name = uuid.uuid4().hex[:12]
    process_file, pid_file = bundle / f"exec-{name}.json", bundle / f"exec-{name}.pid"
    process_file.write_text(json.dumps(process))
    return process_file, pid_file


async def kill_exec(pid_file: Path, proc: asyncio.subprocess.Process) -> None:
    """Kill the exec'd command (its pid is in the pid file) with everything it started, and the runtime's client.

    Runs on a thread that finishes even if the awaiting task is cancelled again meanwhile."""
    await asyncio.shield(asyncio.to_thread(_kill_exec, pid_file, proc))


def _kill_exec(pid_file: Path, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + PID_FILE_WAIT
    while (pid := _read_pid(pid_file)) is None and proc.returncode is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the runtime is still starting the command
    if pid is not None and not proctree.started_by(pid, _mtime(pid_file)):
        log.info("exec'd command gone before its kill; its pid is not killed", pid=pid)
        pid = None
    if pid is not None:
        # The runtime's client is the command's parent: left alive, it reaps the killed command and exits. Killed
        # first, it would leave the command a zombie of the container's init, which may never reap it (critest's
        # `pgrep sleep` after a timed-out ExecSync still finds it).
        kill_tree(pid, keep=frozenset({proc.pid}))
        deadline = time.monotonic() + RUNTIME_EXIT_WAIT
        while proc.returncode is None and time.monotonic() < deadline:
            time.sleep(0.005)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _exec_failed(container_id: str, program: str, message: str) -> MoorageError:
    """The runtime could not start the command: a program the container lacks is NOT_FOUND and one it may not run
    FAILED_PRECONDITION (both the request's doing, not the node's), anything else stays an internal error."""
    said = f"exec in container {container_id} failed: {message}"
    if "no such file or directory" in message or "executable file not found" in message:
        return NotFound(f"cmd[0] {program!r} not found in the container: {said}")
    if "permission denied" in message:
        return FailedPrecondition(f"cmd[0] {program!r} cannot be run in the container: {said}")
    return MoorageError(said)
