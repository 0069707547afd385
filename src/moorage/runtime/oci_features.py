"""What an OCI runtime can do, from its own ``features`` command (OCI runtime-spec ``features.md``).

``runc features`` (1.1+) prints a JSON document whose ``mountOptions`` lists every mount option it
understands; ``rro`` among them means it can make a bind mount read-only recursively, submounts included,
with mount_setattr(2) (Linux 5.12+). A runtime without the command (crun 1.8: "unknown command features"),
or one that fails or prints garbage, is taken to support nothing optional. The command is run once per
runtime binary and the answer cached by :class:`moorage.runtime.handlers.Handlers`.

What moorage reports from it: ``RuntimeHandlerFeatures.recursive_read_only_mounts`` in Status (the kubelet
only asks for recursive read-only mounts on handlers that report it), and what CreateContainer accepts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_SECONDS = 10.0
MOUNT_SETATTR_KERNEL = (5, 12)


@dataclass(frozen=True)
class OciFeatures:
    """The optional abilities of one OCI runtime on this node."""

    mount_options: frozenset[str] = frozenset()
    # Whether the running kernel has mount_setattr(2), which recursive mount attributes need.
    kernel_mount_setattr: bool = False

    @property
    def recursive_read_only(self) -> bool:
        return "rro" in self.mount_options and self.kernel_mount_setattr


def parse(output: bytes, kernel_release: str) -> OciFeatures:
    """The features of a runtime from its ``features`` output; nothing optional when it is not the OCI JSON."""
    try:
        doc = json.loads(output)
    except ValueError:
        return OciFeatures(kernel_mount_setattr=kernel_has_mount_setattr(kernel_release))
    options = doc.get("mountOptions") if isinstance(doc, dict) else None
    names = frozenset(o for o in options if isinstance(o, str)) if isinstance(options, list) else frozenset()
    return OciFeatures(mount_options=names, kernel_mount_setattr=kernel_has_mount_setattr(kernel_release))


def kernel_has_mount_setattr(release: str) -> bool:
    """Whether a kernel of ``release`` (``uname -r``, e.g. "6.1.0-18-amd64") has mount_setattr(2)."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return match is not None and (int(match[1]), int(match[2])) >= MOUNT_SETATTR_KERNEL


async def probe(binary: str) -> OciFeatures:
    """Run ``<binary> features`` once; a runtime that has no such command, fails or hangs supports nothing optional."""
    release = os.uname().release
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "features",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        log.warning("cannot ask the OCI runtime for its features", runtime=binary, error=str(exc))
        return OciFeatures(kernel_mount_setattr=kernel_has_mount_setattr(release))
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            stdout, stderr = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("the OCI runtime's features command hung; assuming no optional features", runtime=binary)
        return OciFeatures(kernel_mount_setattr=kernel_has_mount_setattr(release))
    if proc.returncode != 0:
        reason = stderr.decode(errors="replace").strip()[:200]
        log.info("the OCI runtime has no features command; assuming none", runtime=binary, reason=reason)
        return OciFeatures(kernel_mount_setattr=kernel_has_mount_setattr(release))
    features = parse(stdout, release)
    log.info("OCI runtime features", runtime=binary, recursive_read_only=features.recursive_read_only)
    return features
