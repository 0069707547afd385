"""CheckpointContainer: a running container's processes and file-system changes, to an archive, left running.

What CRI-O does (``internal/lib/checkpoint.go``), in order, each refusal before anything is made:

1. the container must be running and the archive's directory must exist (FAILED_PRECONDITION), its OCI
   runtime must have a ``checkpoint`` command (crun only has one when built with CRIU) and CRIU must work on
   this node (``criu check``, asked once); either refusal is FAILED_PRECONDITION with the runtime's or CRIU's
   reason; a container of a pod in a user namespace (hostUsers: false) is refused likewise (FAILED_PRECONDITION):
   its root filesystem and volumes are idmapped mounts moorage makes, which the runtime's checkpoint neither
   saves nor restores, and CRIU 3.17 cannot restore into a user namespace it did not make;
2. the container is paused (the cgroup freezer), so its files do not change between the dump and the copy of
   its writable layer, then dumped by ``<runtime> checkpoint --leave-running`` into a work directory under
   the state root, its writable layer's changes copied beside, and resumed whatever happened;
3. the archive (:mod:`moorage.runtime.containers.checkpoint.archive`) is written to ``location`` under a temporary name
   and renamed onto it; the work directory goes. A failure at any step leaves nothing at ``location``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import time
from functools import cached_property
from pathlib import Path

from moorage.errors import DeadlineExceeded, FailedPrecondition, MoorageError
from moorage.runtime.containers.base import ContainerBase, log
from moorage.runtime.containers.checkpoint import archive
from moorage.runtime.containers.checkpoint.criu import Criu, node_criu
from moorage.runtime.containers.oci import OciRuntime
from moorage.state.models import CONTAINER_RUNNING, ContainerRecord

USERNS_REFUSAL = (
    "{what} is in a pod with a user namespace (hostUsers: false): checkpoint and restore are not supported there "
    "(the idmapped root filesystem and volumes moorage makes are not in what the OCI runtime's checkpoint saves "
    "or restores)"
)

RESUME_TIMEOUT = 30.0
"""Seconds a paused container's resume may take, after the request's own deadline passed or not."""


class Checkpoint(ContainerBase):
    @property
    def criu(self) -> Criu:
        return node_criu()

    @cached_property
    def _checkpoints(self) -> dict[str, tuple[asyncio.Lock, list[Path]]]:
        """Container id → the lock one checkpoint of it at a time holds (a paused container cannot be paused
        again: a second request waits), and the work directories in use."""
        return {}

    async def checkpoint(self, container_id: str, target: str, timeout: int) -> None:
        """Write the checkpoint archive of running container ``container_id`` to ``target`` (an absolute path)
        within ``timeout`` seconds (0: no limit of moorage's own)."""
        location = Path(target)
        record = await self._check_running(container_id)
        if "user" in (await self.pods.get(record.sandbox_id)).status.namespaces:
            raise FailedPrecondition(USERNS_REFUSAL.format(what=f"container {container_id}"))
        if not location.parent.is_dir():
            raise FailedPrecondition(f"location {location}: directory {location.parent} does not exist")
        runtime = await self.runtime_of(await self.get(container_id))
        if not await runtime.can_checkpoint():
            raise FailedPrecondition(
                f"the OCI runtime {runtime.path} of container {container_id} has no checkpoint command "
                "(crun has one only when built with CRIU)"
            )
        await self.criu.require()
        lock, works = self._checkpoints.setdefault(container_id, (asyncio.Lock(), []))
        work = self.state / "checkpoints" / f"{container_id}.{secrets.token_hex(4)}"
        works.append(work)
        try:
            async with asyncio.timeout(timeout or None), lock:
                record = await self._check_running(container_id)  # it may have exited while this waited
                await asyncio.to_thread(self._sweep, work.parent)
                await self._dump(record, runtime, work)
                await asyncio.to_thread(archive.write, location, work)
        except TimeoutError:
            raise DeadlineExceeded(f"checkpoint of container {container_id} took longer than {timeout} s") from None
        finally:
            works.remove(work)
            if not works:
                del self._checkpoints[container_id]
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))
        log.info("container checkpointed", container=container_id, location=str(location))

    async def _check_running(self, container_id: str) -> ContainerRecord:
        record = await self.get(container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state}, not RUNNING; cannot checkpoint it")
        return record

    def _sweep(self, checkpoints: Path) -> None:
        """Remove work directories no checkpoint uses: left by a daemon that died during one."""
        in_use = {work for _, works in self._checkpoints.values() for work in works}
        if checkpoints.is_dir():
            for stale in checkpoints.iterdir():
                if stale not in in_use:
                    shutil.rmtree(stale, ignore_errors=True)

    async def _dump(self, record: ContainerRecord, runtime: OciRuntime, work: Path) -> None:
        """The container's metadata, CRIU images and file-system changes, in ``work``."""
        work.mkdir(parents=True, mode=0o700)
        spec = json.loads((self.bundle(record.id) / "config.json").read_text())
        archive.write_json(work, archive.SPEC_DUMP, spec)
        archive.write_json(work, archive.CONFIG_DUMP, await self._config_dump(record))
        if binds := await asyncio.to_thread(archive.bind_mounts, spec):
            archive.write_json(work, archive.BIND_MOUNTS, binds)
        await runtime.pause(record.id)
        try:
            await runtime.checkpoint(record.id, work / archive.CHECKPOINT_DIR, work)
            upper = self.layer_dir(record.id) / "upper"
            skip = archive.mount_points(spec)
            deleted = await asyncio.to_thread(archive.rootfs_diff, upper, work / archive.ROOTFS_DIFF, skip)
            if deleted:
                archive.write_json(work, archive.DELETED_FILES, deleted)
        finally:
            await asyncio.shield(self._resume(record.id, runtime))

    async def _resume(self, container_id: str, runtime: OciRuntime) -> None:
        try:
            async with asyncio.timeout(RESUME_TIMEOUT):
                await runtime.resume(container_id)
        except (MoorageError, TimeoutError) as exc:
            log.error("container left paused after its checkpoint", container=container_id, error=str(exc))
            raise

    async def _config_dump(self, record: ContainerRecord) -> dict[str, object]:
        sandbox = await self.pods.get(record.sandbox_id)
        image = None
        with contextlib.suppress(MoorageError):
            image = await self.images.find(record.image_id)
        names = image.repo_tags if image is not None else []
        return archive.config_dump(
            container_id=record.id,
            name=record.name,
            image=record.status.image,
            image_ref=record.image_id,
            image_name=names[0] if names else record.status.image,
            runtime=sandbox.status.runtime_handler or self.config().runtime.default_handler,
            created_at=record.created_at,
            checkpointed_at=time.time_ns(),
        )
