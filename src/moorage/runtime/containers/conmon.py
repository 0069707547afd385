"""Create containers through conmon, as CRI-O does: the daemon never parents a container process.

How conmon 2.1 works (read from its source, checked against ``conmon --help`` 2.1.6):

- **Daemonizing.** The process we exec forks once and exits 0 right away, after writing the child's pid to
  ``--conmon-pidfile``. The child redirects its stdio to /dev/null, calls ``setsid()``, makes itself a child
  subreaper and forks the runtime's ``create``; the container's init is reparented to it. So we only wait for
  the short-lived first process (reaping it), and the monitor survives us. We also start it with
  ``start_new_session`` so a signal to our process group never reaches it. (``--sync`` would keep conmon our
  child by forking only once: not what a daemon wants.)
- **Sync pipe.** There is no ``--syncpipe`` option: the write end of a pipe is passed as an inherited fd whose
  number is in ``_OCI_SYNCPIPE``. With ``--api-version 1`` conmon writes one JSON line: ``{"data": <pid>}``
  once the runtime's create succeeded and it read the container pid file, or ``{"data": -1, "message":
  "<runtime stderr>"}`` when create failed. Conmon failing before that just closes the pipe (EOF).
  (``_OCI_STARTPIPE`` would make conmon block before forking until we write a byte, for moving it into a
  cgroup first; not used yet.)
- **Runtime argv.** conmon runs ``<runtime> [--runtime-arg...] create --bundle B --pid-file P <cid>``; the
  runtime's global options (``--root``, ``--log-format=json``) go through ``--runtime-arg``.
- **Exit files.** When the container exits, conmon drains its output into the log, then writes the exit code
  (``128+signal`` for a signalled process, so SIGKILL gives 137) to ``<exit-dir>/<cid>`` and
  ``<persist-dir>/exit`` with ``g_file_set_contents`` (temp file + rename, so readers never see a partial
  file, and a present exit file means the log is complete).
- **Logs.** ``-l k8s-file:<path>`` writes the CRI format ``<RFC3339Nano> stdout|stderr P|F <line>``.
- conmon also leaves ``attach``, ``ctl`` and ``winsz`` in the bundle and a ``<socket-dir>/<cuuid>`` symlink.

Per-container layout under ``state_dir`` (see :class:`ConmonPaths`)::

    state_dir/exits/<cid>              exit code, written by conmon
    state_dir/containers/<cid>/        conmon.pid, container.pid, exit (persist dir), oom
    state_dir/attach/<cid>             conmon's attach-socket symlink
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from moorage.errors import AlreadyExists, DeadlineExceeded, MoorageError, NotFound, Unavailable
from moorage.runtime.containers.oci import OciRuntime, parse_runtime_stderr

DEFAULT_CREATE_TIMEOUT = 60.0
_ROLLBACK_TIMEOUT = 30.0


@dataclass(frozen=True)
class ConmonPaths:
    """Where conmon reads and writes one container's files."""

    state_dir: Path
    cid: str

    @property
    def exits_dir(self) -> Path:
        return self.state_dir / "exits"

    @property
    def exit_file(self) -> Path:
        return self.exits_dir / self.cid

    @property
    def container_dir(self) -> Path:
        return self.state_dir / "containers" / self.cid

    @property
    def conmon_pidfile(self) -> Path:
        return self.container_dir / "conmon.pid"

    @property
    def container_pidfile(self) -> Path:
        return self.container_dir / "container.pid"

    @property
    def socket_dir(self) -> Path:
        return self.state_dir / "attach"


@dataclass(frozen=True)
class SyncMessage:
    """One line conmon writes on the sync pipe: ``data`` is a pid (or exec exit code), -1 on failure."""

    data: int
    message: str | None = None


def parse_sync_message(line: bytes) -> SyncMessage:
    try:
        obj = json.loads(line)
        data = obj["data"]
        message = obj.get("message")
        if not isinstance(data, int) or not (message is None or isinstance(message, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MoorageError(f"conmon: unexpected sync pipe message {line[:300]!r}") from exc
    return SyncMessage(data, message)


def conmon_argv(
    conmon: str,
    runtime: OciRuntime,
    paths: ConmonPaths,
    *,
    name: str,
    bundle: Path,
    log_path: Path,
    terminal: bool = False,
    stdin: bool = False,
    leave_stdin_open: bool = False,
    log_level: str = "error",
    restore: Path | None = None,
) -> list[str]:
    argv = [
        conmon,
        "--api-version", "1",
        "--cid", paths.cid,
        "--cuuid", paths.cid,  # CRI-O passes the container id; it names the attach-socket symlink
        "--name", name,
        "--runtime", runtime.path,
        "--bundle", str(bundle),
        "--container-pidfile", str(paths.container_pidfile),
        "--conmon-pidfile", str(paths.conmon_pidfile),
        "--log-path", f"k8s-file:{log_path}",
        "--exit-dir", str(paths.exits_dir),
        "--persist-dir", str(paths.container_dir),
        "--socket-dir-path", str(paths.socket_dir),
        "--log-level", log_level,
    ]  # fmt: skip
    if runtime.systemd_cgroup:
        argv.append("--systemd-cgroup")
    for arg in runtime.global_args():
        if arg != "--systemd-cgroup":  # conmon adds it itself for create with -s
            argv += ["--runtime-arg", arg]
    if terminal:
        argv.append("--terminal")
    if stdin:
        argv.append("--stdin")
    if stdin and leave_stdin_open:
        argv.append("--leave-stdin-open")  # else the first attach that closes stdin closes it (CRI stdin_once)
    if restore is not None:  # `<runtime> restore --detach --image-path <restore>` instead of create: running at once
        argv += ["--restore", str(restore)]
    return argv


def read_exit(exits_dir: Path, cid: str) -> int | None:
    """The exit code conmon wrote for ``cid``, or None while the container has not exited."""
    try:
        text = (exits_dir / cid).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MoorageError(f"read exit file {exits_dir / cid}: {exc}") from exc
    try:
        return int(text)
    except ValueError as exc:
        raise MoorageError(f"exit file {exits_dir / cid}: not an exit code: {text[:100]!r}") from exc


def conmon_pid(paths: ConmonPaths) -> int | None:
    """The daemonized conmon's pid if that process still runs and monitors ``paths.cid``."""
    try:
        pid = int(paths.conmon_pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if paths.cid.encode() in cmdline and b"--cid" in cmdline else None


async def wait_exited(paths: ConmonPaths, timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) for the container's conmon to exit: it may write the ``oom`` file after
    the exit file, when the cgroup's OOM event reaches it late, and exits once both are written."""
    deadline = asyncio.get_running_loop().time() + timeout
    interval = 0.001  # conmon exits within a few ms of writing the exit file: poll often at first
    while conmon_pid(paths) is not None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.02)


async def create_container(
    conmon: str,
    runtime: OciRuntime,
    *,
    cid: str,
    name: str,
    bundle: Path,
    state_dir: Path,
    log_path: Path,
    terminal: bool = False,
    stdin: bool = False,
    leave_stdin_open: bool = False,
    timeout: float = DEFAULT_CREATE_TIMEOUT,
    restore: Path | None = None,
) -> int:
    """Run ``<runtime> create`` under a daemonized conmon; return the container's pid (state "created"). With
    ``restore`` (a directory of CRIU images), ``<runtime> restore`` instead: the container runs on return.

    On any failure, cancellation included, conmon is killed, ``<runtime> delete --force`` runs and the files
    conmon wrote are removed before the error propagates.
    """
    paths = ConmonPaths(state_dir, cid)
    paths.exits_dir.mkdir(parents=True, exist_ok=True)
    paths.socket_dir.mkdir(parents=True, exist_ok=True)
    try:
        paths.container_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError as exc:
        raise AlreadyExists(f"create container {cid}: {paths.container_dir} already exists") from exc
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = conmon_argv(
        conmon,
        runtime,
        paths,
        name=name,
        bundle=bundle,
        log_path=log_path,
        terminal=terminal,
        stdin=stdin,
        leave_stdin_open=leave_stdin_open,
        restore=restore,
    )
    try:
        async with asyncio.timeout(timeout):
            return await _spawn_and_sync(argv, conmon, cid, bundle)
    except BaseException as exc:
        try:
            await asyncio.shield(_rollback(runtime, paths, bundle, log_path))
        except Exception as rollback_exc:  # keep the original error; say what was left behind
            exc.add_note(f"rollback of {cid} failed: {rollback_exc}")
        if isinstance(exc, TimeoutError):
            raise DeadlineExceeded(f"create container {cid}: conmon did not report within {timeout:g}s") from exc
        raise


async def _spawn_and_sync(argv: list[str], conmon: str, cid: str, bundle: Path) -> int:
    sync_r, sync_w = os.pipe()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(sync_r, "rb", buffering=0)
    )
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(sync_w,),
                env={**os.environ, "_OCI_SYNCPIPE": str(sync_w)},
                start_new_session=True,
                cwd=bundle,  # conmon drops files (an "oom" marker) in its working directory
            )
        except OSError as exc:
            raise Unavailable(f"cannot run conmon {conmon}: {exc}") from exc
        finally:
            os.close(sync_w)  # only conmon may hold the write end, or we would never see EOF
        # The first conmon process exits as soon as it has forked the monitor: reap it.
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            detail = out.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            raise MoorageError(f"create container {cid}: conmon failed: {detail}")
        line = await reader.readline()
    finally:
        transport.close()
    if not line.strip():
        raise MoorageError(f"create container {cid}: conmon exited without reporting a pid")
    msg = parse_sync_message(line)
    if msg.data <= 0:
        detail = parse_runtime_stderr((msg.message or "").encode()) or "no message"
        raise MoorageError(f"create container {cid}: {detail}")
    return msg.data


async def _rollback(runtime: OciRuntime, paths: ConmonPaths, bundle: Path, log_path: Path) -> None:
    """Undo a failed create: conmon first (so it writes no exit file after we clean), then the runtime, then files."""
    async with asyncio.timeout(_ROLLBACK_TIMEOUT):
        pid = conmon_pid(paths)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while conmon_pid(paths) == pid and Path(f"/proc/{pid}/stat").exists() and not _is_zombie(pid):
                await asyncio.sleep(0.01)
        with contextlib.suppress(NotFound):
            await runtime.delete(paths.cid, force=True)
    shutil.rmtree(paths.container_dir, ignore_errors=True)
    for path in (paths.exit_file, paths.socket_dir / paths.cid, log_path, bundle / "attach", bundle / "ctl"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(FileNotFoundError):
        (bundle / "winsz").unlink()


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
