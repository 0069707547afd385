"""The image service: pull, import, find, list, remove and account for images; repair at start-up.

What the CRI ImageService and the CLI call. Two PullImage calls for the same name share one pull (and its
progress); a pull that receives nothing for ``image.pull_progress_timeout`` seconds is cancelled with an
error naming the setting, since the kubelet puts no deadline on PullImage. A failed pull leaves nothing in
the store: its blobs and layers are collected as soon as it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import structlog

from moorage.config import Config
from moorage.errors import AmbiguousId, DeadlineExceeded, FailedPrecondition, InvalidArgument, InvalidImage
from moorage.images import manifest as mf
from moorage.images.archive import Archive, ArchiveImage, ArchiveLayer
from moorage.images.auth import Credentials
from moorage.images.content import ContentStore, Ingest
from moorage.images.layers import Fetch, LayerStore
from moorage.images.progress import Progress, SharedWork
from moorage.images.reference import Reference, parse
from moorage.images.registries_conf import candidates, load_registries
from moorage.images.snapshots import Snapshotter, chain_ids
from moorage.store.db import Store
from moorage.store.image_records import Catalog, ImageRecord, Layer

if TYPE_CHECKING:
    from moorage.images.pull import Puller
    from moorage.images.registry_client import HttpClients

log = structlog.get_logger(__name__)

_FULL_ID = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
_ID_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{4,63})")
WATCHDOG_INTERVAL = 0.5


@dataclass(frozen=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int


class ImageManager:
    def __init__(self, root: Path, store: Store, config: Callable[[], Config]) -> None:
        self.config = config
        self.catalog = Catalog(store)
        self.root = root
        self.layers = LayerStore(
            ContentStore(root / "content"),
            Snapshotter(root / "snapshots"),
            self.catalog,
            max_layer_size=lambda: self.config().image.max_layer_size,
        )
        timeout = config().image.pull_progress_timeout  # as started: a reload needs a restart for it
        self._read_timeout = float(timeout) if timeout else None
        self._http: HttpClients | None = None
        self._puller: Puller | None = None
        self._pulls: SharedWork[ImageRecord] = SharedWork()
        self._progress: dict[str, Progress] = {}

    async def repair(self) -> None:
        """Before serving: drop what a crash left half-done, and images whose layers are gone."""
        leftovers = await asyncio.to_thread(self.layers.snapshots.repair)
        if leftovers:
            log.warning("removed layers a crash left half-unpacked or half-deleted", paths=leftovers)
        for record in await self.catalog.all():
            missing = [la.chain_id for la in record.layers if not self.layers.snapshots.exists(la.chain_id)]
            if missing or not self.layers.content.has(record.id):
                log.error("image is incomplete on disk; forgetting it so it is pulled again", image=record.id)
                await self.catalog.delete(record.id)
        await self.layers.collect()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    @property
    def puller(self) -> Puller:
        """Made at the first pull: the registry client's modules (httpx, about 50 ms) are not imported before,
        so the daemon answers on its socket that much sooner."""
        if self._puller is None:
            from moorage.images.pull import Puller  # noqa: PLC0415 - see the docstring
            from moorage.images.registry_client import HttpClients  # noqa: PLC0415

            self._http = HttpClients.create(
                read_timeout=self._read_timeout, certs_dirs=lambda: self.config().image.certs_dirs
            )
            self._puller = Puller(self.layers, self._http, self.config)
        return self._puller

    # --- pull -----------------------------------------------------------------------------------------------

    async def pull(self, text: str, credentials: Credentials) -> ImageRecord:
        # Pulls share a download only with the same credentials: a pull with bad ones must not fail (or
        # authorize) another. Once content is verified and local, any pull reuses it.
        key = _pull_key(text, credentials)
        progress = self._progress.setdefault(key, Progress(text))
        try:
            return await self._pulls.run(key, lambda: self._watched_pull(text, credentials, progress))
        finally:
            if key not in self._pulls.running():
                self._progress.pop(key, None)

    def progress(self, text: str, credentials: Credentials) -> Progress | None:
        return self._progress.get(_pull_key(text, credentials))

    async def _watched_pull(self, text: str, credentials: Credentials, progress: Progress) -> ImageRecord:
        timeout = self.config().image.pull_progress_timeout
        task = asyncio.ensure_future(self.puller.pull(text, credentials, progress))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=WATCHDOG_INTERVAL)
                if done:
                    record = task.result()
                    progress.finish(image_id=record.id)
                    return record
                if timeout and progress.idle_seconds() > timeout:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise DeadlineExceeded(
                        f"pulling {text}: no progress for {timeout} s (image.pull_progress_timeout); pull cancelled"
                    )
        except BaseException as exc:
            task.cancel()
            progress.finish(error=getattr(exc, "message", str(exc)) or type(exc).__name__)
            # Nothing of a failed pull stays, partial downloads included: the next attempt starts clean.
            await asyncio.shield(self.layers.collect(partials_older_than=0))
            raise

    # --- import ---------------------------------------------------------------------------------------------

    async def import_archive(self, path: Path) -> list[ImageRecord]:
        """Load every image of a ``docker save`` or OCI archive, for nodes without registry access."""
        archive = await asyncio.to_thread(Archive, path)
        try:
            images = await asyncio.to_thread(archive.images)
            return [await self._import_one(archive, image, str(path)) for image in images]
        finally:
            await asyncio.to_thread(archive.close)

    async def _import_one(self, archive: Archive, image: ArchiveImage, where: str) -> ImageRecord:
        config = mf.parse_config(image.config, where)
        if len(config.diff_ids) != len(image.layers):
            raise InvalidImage(f"{where}: {len(image.layers)} layers but {len(config.diff_ids)} diff ids in the config")
        chains = chain_ids(config.diff_ids)
        body, media_type = image.manifest, image.manifest_media_type
        if body is None:
            body, media_type = _docker_manifest(image), mf.DOCKER_MANIFEST
        manifest_digest = _sha256(body)
        progress = Progress(where)
        with self.layers.lease() as lease:
            lease.add(manifest_digest, image.config_digest, *(la.digest for la in image.layers), *chains)
            await asyncio.to_thread(self.layers.content.put, body, manifest_digest)
            await asyncio.to_thread(self.layers.content.put, image.config, image.config_digest)
            for index, layer in enumerate(image.layers):
                if self.layers.snapshots.exists(chains[index]):
                    continue
                blob = await self.layers.blob(layer.digest, layer.size, _copier(archive, layer))
                await self.layers.snapshot(chains[index], config.diff_ids[index], blob, progress, layer.digest)
            names: list[str] = []
            for name in image.names:
                ref = parse(name)
                names += [n for n in (ref.repo_tag, f"{ref.name}@{manifest_digest}") if n]
            record = ImageRecord(
                id=image.config_digest,
                manifest_digest=manifest_digest,
                size=len(body) + len(image.config) + sum(la.size for la in image.layers),
                config=image.config,
                names=tuple(names),
                layers=tuple(
                    Layer(chains[i], config.diff_ids[i], la.digest, la.size, la.media_type)
                    for i, la in enumerate(image.layers)
                ),
            )
            await self.catalog.save(record, {manifest_digest, image.config_digest, *(la.digest for la in image.layers)})
        log.info("image imported", archive=where, image_id=record.id, names=names, media_type=media_type)
        return record

    # --- find, list, remove ---------------------------------------------------------------------------------

    async def find(self, text: str) -> ImageRecord | None:
        """The image ``text`` names: its id (or a unique id prefix), a repo tag or a repo digest."""
        if match := _FULL_ID.fullmatch(text):
            return await self.catalog.get(f"sha256:{match.group(1)}")
        if (image_id := await self.catalog.id_by_name(text)) is not None:  # a name as stored: fully qualified
            return await self.catalog.get(image_id)
        conf = load_registries(self.config())
        try:
            refs = candidates(text, conf)
        except InvalidArgument:
            refs = []
            if not _ID_PREFIX.fullmatch(text):
                raise
        for ref in refs:
            record = await self._find_ref(ref)
            if record is not None:
                return record
        if match := _ID_PREFIX.fullmatch(text):
            ids = await self.catalog.ids_by_prefix(f"sha256:{match.group(1)}")
            if len(ids) > 1:
                raise AmbiguousId(f"{text!r} is a prefix of more than one image id; give more of it")
            if ids:
                return await self.catalog.get(ids[0])
        return None

    async def _find_ref(self, ref: Reference) -> ImageRecord | None:
        name = f"{ref.name}@{ref.digest}" if ref.digest else ref.repo_tag
        image_id = await self.catalog.id_by_name(name)
        if image_id is not None:
            return await self.catalog.get(image_id)
        if ref.digest:  # the platform manifest's digest, where the name records the index's
            for record in await self.catalog.all():
                if record.manifest_digest == ref.digest and any(n.startswith(ref.name + "@") for n in record.names):
                    return record
        return None

    async def list(self, filter_text: str = "") -> list[ImageRecord]:
        if filter_text:
            record = await self.find(filter_text)
            return [record] if record else []
        return await self.catalog.all()

    async def remove(self, text: str) -> ImageRecord | None:
        """Remove the image ``text`` names with all its names; nothing to remove is not an error."""
        record = await self.find(text)
        if record is None:
            return None
        users = await self.catalog.users(record.id)
        if users:
            raise FailedPrecondition(
                f"image {text} ({record.id}) is in use by container(s) {', '.join(u[:13] for u in users)}; "
                "remove them first"
            )
        await self.catalog.delete(record.id)
        log.info("image removed", image_id=record.id, names=list(record.names))
        await self.layers.collect()
        return record

    def pinned(self, record: ImageRecord) -> bool:
        """The sandbox (pause) image is pinned: the kubelet's image GC never removes it."""
        try:
            ref = parse(self.config().sandbox_image)
        except InvalidArgument:
            return False
        return (ref.repo_tag or f"{ref.name}@{ref.digest}") in record.names

    async def usage(self) -> FsUsage:
        """Bytes and inodes the image filesystem holds: unpacked layers plus the content store."""
        layer_usage = await self.catalog.snapshots()
        blob_bytes, blob_count = await asyncio.to_thread(self.layers.content.usage)
        return FsUsage(
            str(self.layers.snapshots.root),
            sum(size for size, _ in layer_usage.values()) + blob_bytes,
            sum(inodes for _, inodes in layer_usage.values()) + blob_count,
        )


def _copier(archive: Archive, layer: ArchiveLayer) -> Fetch:
    async def fetch(ingest: Ingest) -> None:
        def copy() -> None:
            ingest.reset()
            source: BinaryIO = archive.open_blob(layer)
            with source:
                while chunk := source.read(1 << 20):
                    ingest.write(chunk)

        await asyncio.to_thread(copy)

    return fetch


def _docker_manifest(image: ArchiveImage) -> bytes:
    """The schema2 manifest a ``docker save`` archive implies (it stores none), so the image has a digest."""
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.DOCKER_MANIFEST,
        "config": {"mediaType": mf.DOCKER_CONFIG, "size": len(image.config), "digest": image.config_digest},
        "layers": [{"mediaType": la.media_type, "size": la.size, "digest": la.digest} for la in image.layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _pull_key(text: str, credentials: Credentials) -> str:
    return f"{text}\0{credentials.fingerprint()}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
