"""What an OCI runtime can do, from its own ``features`` command (OCI runtime-spec ``features.md``).

``runc features`` (1.1+) prints a JSON document whose ``mountOptions`` lists every mount option it
understands; ``rro`` among them means it can make a bind mount read-only recursively, submounts included,
with mount_setattr(2) (Linux 5.12+). crun before 1.9 has no such command ("unknown command features") but does
apply ``rro`` with mount_setattr (checked on Debian 12's crun 1.8.1: a tmpfs under an ``rro`` bind is read-only
in the container), so a crun of 1.8 or later that lacks the command is known by its ``--version``
(:func:`known_without_features`). Any other runtime without the command, or one that fails or prints garbage,
is taken to support nothing optional. The command is run once per
runtime binary and the answer cached by :class:`moorage.runtime.containers.handlers.Handlers`.

What moorage reports from it: ``RuntimeHandlerFeatures.recursive_read_only_mounts`` in Status (the kubelet
only asks for recursive read-only mounts on handlers that report it), and what CreateContainer accepts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_SECONDS = 10.0
MOUNT_SETATTR_KERNEL = (5, 12)
CRUN_RRO = (1, 8)
"""The oldest crun known here to apply ``rro`` (it predates crun's ``features`` command)."""
CRUN_VERSION = re.compile(rb"crun version (\d+)\.(\d+)")


@dataclass(frozen=True)
class OciFeatures:
    """The optional abilities of one OCI runtime on this node."""

    mount_options: frozenset[str] = frozenset()
    # Whether the running kernel has mount_setattr(2), which recursive mount attributes need.
    kernel_mount_setattr: bool = False
    # Whether pods on it may have a user namespace: the node's answer (moorage makes the idmapped mounts), set by
    # moorage.runtime.containers.handlers.Handlers.features.
    user_namespaces: bool = False
    # How it binds a volume into a pod's user namespace. runc 1.1 binds inside the pod's mount namespace, where the
    # read-only flag of moorage's read-only bind is locked (root with CAP_SYS_ADMIN in the pod cannot clear it)
    # and the bind is recursive. crun 1.8 attaches a fresh bind of its own, where the flag is not locked, and
    # without the volume's submounts. Newer crun is taken to do the same until shown otherwise.
    locks_readonly_in_userns: bool = True
    rbinds_in_userns: bool = True

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


def known_without_features(version_output: bytes) -> frozenset[str]:
    """The mount options of a runtime that has no ``features`` command, from its ``--version``: ``rro`` for crun
    1.8 or later, nothing for anything else."""
    match = CRUN_VERSION.match(version_output.strip())
    if match is not None and (int(match[1]), int(match[2])) >= CRUN_RRO:
        return frozenset({"rro"})
    return frozenset()


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
    version = await _version(binary)
    crun = CRUN_VERSION.match(version.strip()) is not None
    if proc.returncode != 0:
        reason = stderr.decode(errors="replace").strip()[:200]
        options = known_without_features(version)
        log.info("the OCI runtime has no features command", runtime=binary, reason=reason, known=sorted(options))
        features = OciFeatures(mount_options=options, kernel_mount_setattr=kernel_has_mount_setattr(release))
    else:
        features = parse(stdout, release)
        log.info("OCI runtime features", runtime=binary, recursive_read_only=features.recursive_read_only)
    return dataclasses.replace(features, locks_readonly_in_userns=not crun, rbinds_in_userns=not crun)


async def _version(binary: str) -> bytes:
    """``<binary> --version``'s output; empty when it fails or hangs."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "--version", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
    except OSError:
        return b""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            stdout, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return b""
    return stdout if proc.returncode == 0 else b""
