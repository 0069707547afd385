"""Blobs and unpacked layers on disk, shared by every pull and import, and their garbage collection.

Each blob digest is downloaded by one task and each chain id unpacked by one task, however many pulls want
it (:class:`~moorage.images.progress.SharedWork`). A pull holds a *lease* on every blob and chain id it will
reference from the moment it learns of them until its image is in the catalog; garbage collection never
removes what is leased or what an image in the catalog references. GC deletes the leftovers of failed pulls
and removed images, and at start-up whatever a crash left.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from moorage.errors import DataLoss, InvalidImage, MoorageError
from moorage.images.content import STALE_INGEST_SECONDS, ContentStore, Ingest
from moorage.images.progress import Progress, SharedWork
from moorage.images.snapshots import Snapshotter
from moorage.images.unpack import apply_layer
from moorage.store.image_records import Catalog

log = structlog.get_logger(__name__)

UNPACK_SLOTS = 2
BLOB_ATTEMPTS = 2
SHARED_BLOB_TRIES = 3

Fetch = Callable[[Ingest], Awaitable[None]]
"""Fills an ingest (resuming at its offset); the layer store commits it."""


class Lease:
    def __init__(self, leases: Counter[str]) -> None:
        self._leases = leases
        self._held: list[str] = []

    def add(self, *keys: str) -> None:
        self._leases.update(keys)
        self._held.extend(keys)

    def release(self) -> None:
        self._leases.subtract(self._held)
        for key in self._held:
            if self._leases[key] <= 0:
                self._leases.pop(key, None)
        self._held.clear()


class LayerStore:
    def __init__(
        self,
        content: ContentStore,
        snapshots: Snapshotter,
        catalog: Catalog,
        max_layer_size: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.content = content
        self.max_layer_size = max_layer_size
        self.snapshots = snapshots
        self.catalog = catalog
        self.leases: Counter[str] = Counter()
        self._blobs: SharedWork[Path] = SharedWork()
        self._blob_owners: dict[str, str] = {}
        self._unpacks: SharedWork[None] = SharedWork()
        self._unpack_slots = asyncio.Semaphore(UNPACK_SLOTS)
        self._gc_lock = asyncio.Lock()

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """Protect what a pull is about to reference from GC until the block ends."""
        lease = Lease(self.leases)
        try:
            yield lease
        finally:
            lease.release()

    # --- blobs ----------------------------------------------------------------------------------------------

    async def blob(self, digest: str, size: int, fetch: Fetch, owner: str = "") -> Path:
        """The committed blob, fetched once however many callers want it at the same moment.

        ``owner`` says whose fetch it is (an endpoint and its credentials): when a download another owner
        started fails, this caller fetches the blob itself rather than fail with the other's error."""
        for _ in range(SHARED_BLOB_TRIES):
            if self.content.has(digest):
                return self.content.path(digest)
            if digest not in self._blobs.running():
                self._blob_owners[digest] = owner
            mine = self._blob_owners.get(digest) == owner
            try:
                return await self._blobs.run(digest, lambda: self._fetch_blob(digest, size, fetch))
            except MoorageError as exc:
                if mine:
                    raise
                log.info(
                    "a download of this blob for another pull failed; fetching it for this one",
                    blob=digest,
                    error=exc.message,
                )
            finally:
                if digest not in self._blobs.running():
                    self._blob_owners.pop(digest, None)
        return await self._blobs.run(digest, lambda: self._fetch_blob(digest, size, fetch))

    async def _fetch_blob(self, digest: str, size: int, fetch: Fetch) -> Path:
        """Fetch, verify and commit; content that fails verification is fetched once more from scratch."""
        for attempt in range(1, BLOB_ATTEMPTS + 1):
            ingest = await asyncio.to_thread(self.content.ingest, digest, size)
            try:
                if ingest.offset != size or size < 0:
                    await fetch(ingest)
                committing = asyncio.ensure_future(asyncio.to_thread(ingest.commit))
                try:
                    return await asyncio.shield(committing)
                except asyncio.CancelledError:
                    await asyncio.wait({committing})  # the thread runs on: let it end before anyone cleans up
                    raise
            except DataLoss as exc:  # commit discarded the bad bytes
                if attempt == BLOB_ATTEMPTS:
                    raise
                log.warning("blob failed verification; fetching it again", blob=digest, error=exc.message)
            except BaseException:
                await asyncio.to_thread(ingest.close)
                raise
        raise AssertionError("unreachable")

    # --- snapshots ------------------------------------------------------------------------------------------

    async def snapshot(self, chain_id: str, diff_id: str, blob: Path, progress: Progress, digest: str) -> None:
        """Unpack ``blob`` as the layer ``chain_id`` unless it is already there; checks the diff id."""
        if self.snapshots.exists(chain_id):
            return
        await self._unpacks.run(chain_id, lambda: self._unpack(chain_id, diff_id, blob, progress, digest))

    async def _unpack(self, chain_id: str, diff_id: str, blob: Path, progress: Progress, digest: str) -> None:
        async with self._unpack_slots:
            progress.set_state(digest, "extracting")
            progress.busy += 1
            prepared = self.snapshots.prepare()
            work: asyncio.Future[Any] | None = None
            try:
                unpacking = asyncio.ensure_future(asyncio.to_thread(apply_layer, blob, prepared, self.max_layer_size()))
                work = unpacking
                stats = await asyncio.shield(unpacking)
                if stats.diff_id != diff_id:
                    raise InvalidImage(
                        f"layer {digest} unpacks to {stats.diff_id}, not the diff id {diff_id} its config names"
                    )
                work = asyncio.ensure_future(asyncio.to_thread(self.snapshots.commit, prepared, chain_id))
                await asyncio.shield(work)
            except BaseException:
                if work is not None and not work.done():
                    await asyncio.wait({work})  # a thread cannot be cancelled: let it finish before cleaning up
                await asyncio.to_thread(self.snapshots.discard, prepared)
                raise
            finally:
                progress.busy -= 1
                progress.touch()
            await self.catalog.add_snapshot(chain_id, stats.size, stats.inodes)
            log.debug("layer unpacked", chain_id=chain_id, bytes=stats.size, inodes=stats.inodes)

    # --- garbage collection ---------------------------------------------------------------------------------

    async def collect(self, partials_older_than: float = STALE_INGEST_SECONDS) -> dict[str, int]:
        """Delete blobs and layers no image references and no pull holds, and partial downloads nobody is
        writing that are older than ``partials_older_than`` seconds. Safe to run at any time."""
        async with self._gc_lock:
            on_disk_blobs = await asyncio.to_thread(lambda: set(self.content.digests()))
            on_disk_chains = await asyncio.to_thread(lambda: set(self.snapshots.committed()))
            leased = set(self.leases)  # taken before reading references: see the module doc
            blobs, chains = await self.catalog.referenced()
            known = await self.catalog.snapshots()
            doomed_blobs = on_disk_blobs - blobs - leased
            doomed_chains = on_disk_chains - chains - leased
            removed_blobs = [d for d in doomed_blobs if d not in self.leases]
            for digest in removed_blobs:
                self.content.delete(digest)
            trash = []
            for chain_id in doomed_chains:
                if chain_id not in self.leases:
                    trash.append(self._to_trash(chain_id))
            await asyncio.to_thread(_remove_trees, [p for p in trash if p])
            gone = [c for c in known if c not in chains and c not in self.leases and not self.snapshots.exists(c)]
            await self.catalog.forget_snapshots(gone)
            partials = await asyncio.to_thread(self.content.sweep_ingest, self._blobs.running(), partials_older_than)
        result = {"blobs": len(removed_blobs), "layers": len(trash), "partials": len(partials)}
        if any(result.values()):
            log.info("garbage collected", **result)
        return result

    def _to_trash(self, chain_id: str) -> Path | None:
        target = self.snapshots.path(chain_id)
        doomed = self.snapshots.trash / uuid.uuid4().hex
        try:
            os.rename(target, doomed)
        except FileNotFoundError:
            return None
        return doomed


def _remove_trees(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
