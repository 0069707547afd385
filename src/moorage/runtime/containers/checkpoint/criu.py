"""Whether CRIU can checkpoint on this node, asked of CRIU itself once (``criu check``) and remembered.

runc and crun checkpoint through CRIU, which needs kernel features a node may lack (and an exact view of the
kernel's vDSO, which a CRIU older than the kernel may not understand). A node where ``criu check`` fails
cannot checkpoint, whatever the container: CheckpointContainer answers FAILED_PRECONDITION with CRIU's own
reason, without touching the container. The answer is cached: the kernel and the installed CRIU do not change
under a running daemon (CRI-O also asks once, when it reads its config).
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
from dataclasses import dataclass

from moorage.errors import FailedPrecondition

_LOCATION = re.compile(r"^\s*(Error|Warn|Warning)\s*\([^)]*\):\s*")
"""CRIU's log prefix, e.g. ``Error (criu/vdso.c:381): ``: the reason is what follows it."""

CHECK_TIMEOUT = 60.0


@dataclass(frozen=True)
class CriuCheck:
    ok: bool
    reason: str
    """Why CRIU cannot run here, in CRIU's words ("" when it can)."""


def reason_of(output: str) -> str:
    """CRIU's error lines from ``criu check``'s output, without their source-location prefix, joined by "; "."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [_LOCATION.sub("", line) for line in lines if line.startswith("Error")]
    return "; ".join(errors or [_LOCATION.sub("", line) for line in lines])


class Criu:
    """The node's CRIU, checked on first use."""

    def __init__(self, binary: str = "criu") -> None:
        self.binary = binary
        self._checked: CriuCheck | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> CriuCheck:
        async with self._lock:
            if self._checked is None:
                self._checked = await self._run_check()
            return self._checked

    async def require(self) -> None:
        """Return when CRIU can checkpoint on this node, else FAILED_PRECONDITION with CRIU's reason."""
        result = await self.check()
        if not result.ok:
            raise FailedPrecondition(f"CRIU cannot checkpoint on this node: {result.reason}")

    async def _run_check(self) -> CriuCheck:
        path = shutil.which(self.binary)
        if path is None:
            return CriuCheck(False, f"{self.binary} is not installed (not found in PATH); install Debian's criu")
        try:
            proc = await asyncio.create_subprocess_exec(
                path, "check", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        except OSError as exc:
            return CriuCheck(False, f"cannot run {path}: {exc.strerror}")
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return CriuCheck(False, f"{path} check did not answer within {CHECK_TIMEOUT:.0f} s")
        if proc.returncode == 0:
            return CriuCheck(True, "")
        text = out.decode(errors="replace")
        return CriuCheck(False, reason_of(text) or f"{path} check failed with exit status {proc.returncode}")


@functools.cache
def node_criu() -> Criu:
    """The daemon's one CRIU, shared by checkpoint and restore: the node's answer is asked once."""
    return Criu()
