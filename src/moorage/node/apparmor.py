"""The node's AppArmor: whether the kernel enforces it, which profiles it has loaded, and loading Moorage's default
profile with ``apparmor_parser``.

The default profile is loaded (``--replace``) the first time a container needs it in a daemon's life, so a new
Moorage's profile text replaces an older one's, and a node that never runs a RuntimeDefault container never pays
for the parser.

Lifecycle::

    node = AppArmor.detect()              # None where AppArmor is off
    await node.ensure_loaded(NAME, TEXT)  # once per daemon, before the first container that uses it
    node.loaded("my-profile")             # True/False; None when securityfs cannot be read
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from moorage.errors import FailedPrecondition

log = structlog.get_logger(__name__)

ENABLED = Path("/sys/module/apparmor/parameters/enabled")
SECURITYFS = Path("/sys/kernel/security/apparmor")
PARSER_TIMEOUT = 60.0


def enabled(flag: Path = ENABLED) -> bool:
    """The kernel has AppArmor and enforces it (what runc, containerd and critest check)."""
    try:
        return flag.read_text().startswith("Y")
    except OSError:
        return False


def loaded_profiles(securityfs: Path = SECURITYFS) -> dict[str, str] | None:
    """Every profile the kernel has loaded, with its mode (enforce, complain, ...); None if unreadable."""
    try:
        text = (securityfs / "profiles").read_text()
    except OSError:
        return None
    profiles = {}
    for line in text.splitlines():
        name, _, mode = line.rpartition(" (")
        if name:
            profiles[name] = mode.rstrip(")")
    return profiles


def status(node: AppArmor | None, profile: str) -> dict[str, object]:
    """What ``moorage info`` shows: whether AppArmor is on, and whether ``profile`` (the default) is loaded, in
    which mode."""
    if node is None:
        return {"enabled": False, "defaultProfile": profile, "defaultProfileMode": None}
    profiles = loaded_profiles(node.securityfs)
    mode = "unknown (securityfs unreadable)" if profiles is None else profiles.get(profile, "not loaded")
    return {"enabled": True, "defaultProfile": profile, "defaultProfileMode": mode}


def parser() -> str | None:
    return shutil.which("apparmor_parser") or next(
        (str(p) for p in (Path("/usr/sbin/apparmor_parser"), Path("/sbin/apparmor_parser")) if p.exists()), None
    )


@dataclass
class AppArmor:
    """AppArmor on a node where it is enabled."""

    securityfs: Path = SECURITYFS
    _ensured: set[str] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def detect(cls) -> AppArmor | None:
        return cls() if enabled() else None

    def loaded(self, profile: str) -> bool | None:
        profiles = loaded_profiles(self.securityfs)
        return None if profiles is None else profile in profiles

    async def ensure_loaded(self, name: str, text: str) -> None:
        """Load (or replace) profile ``name`` from ``text``, once per daemon; FailedPrecondition if it cannot be."""
        if name in self._ensured:
            return
        async with self._lock:
            if name in self._ensured:
                return
            await load(name, text)
            self._ensured.add(name)


async def load(name: str, text: str) -> None:
    binary = parser()
    if binary is None:
        raise FailedPrecondition(
            f"AppArmor profile {name!r} cannot be loaded: apparmor_parser is not installed (Debian: apparmor)"
        )
    proc = await asyncio.create_subprocess_exec(
        binary, "--replace", "--skip-cache", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, errors = await asyncio.wait_for(proc.communicate(text.encode()), PARSER_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise FailedPrecondition(
            f"AppArmor profile {name!r}: apparmor_parser did not finish in {PARSER_TIMEOUT} s"
        ) from None
    if proc.returncode != 0:
        reason = errors.decode(errors="replace").strip()[-500:]
        raise FailedPrecondition(f"AppArmor profile {name!r} cannot be loaded: {reason}")
    log.info("apparmor profile loaded", profile=name, warnings=errors.decode(errors="replace").strip() or None)
