"""Restoring a container from a checkpoint archive, as CRI-O does (``server/container_restore.go``).

CRI-O's rule: a CreateContainer whose ``config.image.image`` names an existing local file restores the
checkpoint archive there (:func:`moorage.runtime.containers.checkpoint.archive.restore_source`; any other file is
INVALID_ARGUMENT). The container is made as any other, in the pod the request names, from the image the
checkpoint was taken of (``config.dump``'s ``rootfsImageRef``: NOT_FOUND naming it when it is not on the
node), with the request's own mounts, resources and security context, but no process yet: the archive's
file-system changes are applied to its writable layer, its deleted files deleted, and CRIU's images kept in
``<bundle>/restore/checkpoint``. StartContainer then runs ``<runtime> restore`` under conmon (``--restore``)
instead of ``start``: the processes go on from where they were checkpointed, in the new pod's network namespace.

A restore-pending container has no runtime container: recovery leaves it CREATED, StopContainer records it
EXITED without signalling anything. Not yet: a terminal (``tty``) is not restored.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.cri import pb
from moorage.errors import NotFound
from moorage.node import binaries
from moorage.runtime.containers import conmon
from moorage.runtime.containers.base import ContainerBase, log
from moorage.runtime.containers.checkpoint import archive
from moorage.runtime.containers.checkpoint.criu import node_criu
from moorage.runtime.containers.oci import OciRuntime
from moorage.state.models import ContainerRecord

RESTORE_DIR = "restore"
"""In a restore-pending container's bundle: CRIU's images (``checkpoint/``) until StartContainer restores."""


@dataclass(frozen=True)
class RestorePlan:
    archive: Path
    config_dump: dict[str, Any]
    spec_dump: dict[str, Any]


async def plan(containers: ContainerBase, config: pb.ContainerConfig) -> tuple[pb.ContainerConfig, RestorePlan] | None:
    """None when ``config`` names an image; for a checkpoint archive the config to create the container with (the
    checkpointed image in place of the archive) and what to restore."""
    dumps = await asyncio.to_thread(archive.restore_source, config.image.image, "config.image.image")
    if dumps is None:
        return None
    config_dump, spec_dump = dumps
    source = Path(config.image.image)
    wanted = str(config_dump.get("rootfsImageRef") or config_dump.get("rootfsImageName") or "")
    image = await containers.images.find(wanted) if wanted else None
    if image is None:
        raise NotFound(
            f"config.image.image {str(source)!r}: the image the checkpoint was taken of ({wanted or 'not named'}) is "
            "not on the node; pull it first"
        )
    restored = pb.ContainerConfig()
    restored.CopyFrom(config)
    restored.image.image = image.id
    return restored, RestorePlan(source, config_dump, spec_dump)


async def unpack(containers: ContainerBase, container_id: str, restore: RestorePlan) -> None:
    """At create, once the bundle and root filesystem are made: the archive's changes onto the rootfs, CRIU's
    images into the bundle (taken apart with the bundle if the create fails)."""
    bundle = containers.bundle(container_id)
    await asyncio.to_thread(archive.unpack_for_restore, restore.archive, bundle / "rootfs", bundle / RESTORE_DIR)
    log.info("container to be restored", container=container_id, archive=str(restore.archive))


def pending(containers: ContainerBase, container_id: str) -> bool:
    return (containers.bundle(container_id) / RESTORE_DIR / archive.CHECKPOINT_DIR).is_dir()


async def start(containers: ContainerBase, record: ContainerRecord, runtime: OciRuntime) -> int:
    """StartContainer of a restore-pending container: ``<runtime> restore`` under conmon; its pid. Where CRIU
    cannot run, FAILED_PRECONDITION with CRIU's reason, and the container stays as it was."""
    await node_criu().require()
    bundle = containers.bundle(record.id)
    config = pb.ContainerConfig.FromString(record.config)
    binary = containers.config().runtime.conmon
    pid = await conmon.create_container(
        binaries.resolve(binary),
        runtime,
        cid=record.id,
        name=record.name,
        bundle=bundle,
        state_dir=containers.state,
        log_path=containers.log_path(record),
        terminal=config.tty,
        stdin=config.stdin,
        leave_stdin_open=not config.stdin_once,
        restore=bundle / RESTORE_DIR / archive.CHECKPOINT_DIR,
    )
    await asyncio.to_thread(shutil.rmtree, bundle / RESTORE_DIR, True)
    log.info("container restored", container=record.id, pid=pid)
    return pid
