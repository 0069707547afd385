"""A typed async wrapper of the runc/crun command line.

runc and crun take the same argv, so one class drives both. Every invocation goes through
:meth:`OciRuntime.argv`, which always puts ``--root <root>`` (never the host's default ``/run/runc``)
and ``--log-format json`` before the subcommand, so the runtime's own state stays in moorage's root and
its errors arrive on stderr as JSON lines we can parse.

Errors are translated here, at the boundary (CRI-O ``internal/oci/runtime_oci.go`` does the same):

- the runtime says the container does not exist → :class:`moorage.errors.NotFound`
- any other non-zero exit → :class:`moorage.errors.MoorageError` carrying the runtime's own message
- the binary cannot be executed → :class:`moorage.errors.Unavailable`
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moorage.errors import FailedPrecondition, InvalidArgument, MoorageError, NotFound, Unavailable

# runc without --log-format json (or a runtime that ignores it) logs like logrus' text formatter.
_KERNEL_REFUSED = re.compile(r"failed to write .*: (invalid argument|numerical result out of range)$")
_LOGRUS_MSG = re.compile(r'\blevel=(?P<level>\w+)\s+msg="(?P<msg>(?:[^"\\]|\\.)*)"')


def parse_runtime_stderr(stderr: bytes) -> str:
    """The runtime's own error message from its stderr: JSON log lines, logrus text or plain text.

    Error-level messages win over others; lines are joined with ``"; "``. Returns ``""`` for empty stderr.
    """
    errors: list[str] = []
    others: list[str] = []
    for raw in stderr.decode(errors="replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        level, msg = "", line
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("msg"), str):
                level, msg = str(obj.get("level", "")), obj["msg"]
        else:
            m = _LOGRUS_MSG.search(line)
            if m is not None:
                level = m["level"]
                msg = m["msg"].encode().decode("unicode_escape", errors="replace")
        (errors if level in ("error", "fatal", "panic") else others).append(msg)
    return "; ".join(errors or others)


def _is_not_found(message: str, root: Path, cid: str | None) -> bool:
    if "does not exist" in message:  # runc: "container does not exist"
        return True
    # crun: "error opening file `<root>/<id>/status`: No such file or directory"
    return cid is not None and "No such file or directory" in message and f"{root}/{cid}" in message


class OciRuntime:
    """One OCI runtime binary (runc or crun) with its own state root."""

    def __init__(self, path: str, root: Path, systemd_cgroup: bool = False) -> None:
        # conmon checks access(path, X_OK) and execs it without a PATH search: keep an absolute path.
        self.path = shutil.which(path) or path if "/" not in path else path
        self.root = root
        self.systemd_cgroup = systemd_cgroup

    def global_args(self) -> list[str]:
        """Options that go before every subcommand (conmon gets these through ``--runtime-arg``)."""
        args = [f"--root={self.root}", "--log-format=json"]
        if self.systemd_cgroup:
            args.append("--systemd-cgroup")
        return args

    def argv(self, *args: str) -> list[str]:
        """The full argv of one runtime call; the only place argv is built."""
        return [self.path, *self.global_args(), *args]

    async def _run(self, args: Sequence[str], cid: str | None) -> bytes:
        argv = self.argv(*args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise Unavailable(f"cannot run OCI runtime {self.path}: {exc}") from exc
        stdout, stderr = await proc.communicate()
        if proc.returncode != 0:
            message = parse_runtime_stderr(stderr) or f"exit status {proc.returncode}"
            what = f"{os.path.basename(self.path)} {args[0]}" + (f" {cid}" if cid else "")
            if _is_not_found(message, self.root, cid):
                raise NotFound(f"{what}: container {cid} not found: {message}")
            if _KERNEL_REFUSED.search(message) or message.startswith("invalid configuration:"):
                # a cgroup file refused a value the request gave, or runc's own check of the config did
                raise InvalidArgument(f"{what}: the kernel refused a requested value: {message}")
            if "unable to set memory limit" in message:  # below what the container already uses
                raise FailedPrecondition(f"{what}: {message}")
            raise MoorageError(f"{what}: {message}")
        return stdout

    async def state(self, cid: str) -> dict[str, Any] | None:
        """The runtime's ``state`` JSON (``status`` is creating|created|running|stopped), None if it has no such id."""
        try:
            out = await self._run(["state", cid], cid)
        except NotFound:
            return None
        state = json.loads(out)
        if not isinstance(state, dict):
            raise MoorageError(f"{self.path} state {cid}: unexpected output {out[:200]!r}")
        return state

    async def list_containers(self) -> list[dict[str, Any]]:
        """Every container the runtime knows under its root (runc prints ``null`` when there is none)."""
        out = await self._run(["list", "--format", "json"], None)
        items = json.loads(out) if out.strip() else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def start(self, cid: str) -> None:
        await self._run(["start", cid], cid)

    async def kill(self, cid: str, signal: int, all: bool = False) -> None:
        args = ["kill", *(["--all"] if all else []), cid, str(int(signal))]
        await self._run(args, cid)

    def has(self, cid: str) -> bool:
        """Whether the runtime keeps state of ``cid`` (runc and crun both keep it in ``<root>/<id>``): without it,
        ``delete`` would only answer that there is no such container."""
        return (self.root / cid).exists()

    async def delete(self, cid: str, force: bool = False) -> None:
        await self._run(["delete", *(["--force"] if force else []), cid], cid)

    async def update(self, cid: str, resources_json: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` to a running container (written to a temp file: crun reads no stdin)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.root, prefix=f".update-{cid}-", suffix=".json") as f:
            json.dump(resources_json, f)
            f.flush()
            await self._run(["update", f"--resources={f.name}", cid], cid)

    async def pause(self, cid: str) -> None:
        await self._run(["pause", cid], cid)

    async def resume(self, cid: str) -> None:
        await self._run(["resume", cid], cid)

    async def can_checkpoint(self) -> bool:
        """Whether this binary has a ``checkpoint`` command (runc always; crun only when built with CRIU)."""
        try:
            await self._run(["checkpoint", "--help"], None)
        except MoorageError:
            return False
        return True

    async def checkpoint(self, cid: str, image_path: Path, work_path: Path) -> None:
        """Dump the container's processes with CRIU into ``image_path`` and leave them running; CRIU's log
        (``dump.log``) and statistics (``stats-dump``) go to ``work_path``."""
        args = ["checkpoint", "--leave-running", f"--image-path={image_path}", f"--work-path={work_path}", cid]
        await self._run(args, cid)

    def exec_argv(
        self,
        cid: str,
        process_json: Path,
        *,
        pid_file: Path | None = None,
        detach: bool = False,
        tty: bool = False,
        console_socket: Path | None = None,
    ) -> list[str]:
        """argv of ``exec --process <process.json>`` for a caller that runs (and streams) it itself; with a
        ``console_socket`` the runtime sends the TTY's master end there."""
        args = ["exec", f"--process={process_json}"]
        if pid_file is not None:
            args.append(f"--pid-file={pid_file}")
        if detach:
            args.append("--detach")
        if tty:
            args.append("--tty")
        if console_socket is not None:
            args.append(f"--console-socket={console_socket}")
        return self.argv(*args, cid)
