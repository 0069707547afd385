"""Image records in the metadata store (the images' side of the records layer beside :mod:`.records`): images, their
names, layers and blobs, and snapshot usage.

An image is keyed by its id, the digest of its config (what Kubernetes calls the image ref). Its names are
repo tags (``docker.io/library/busybox:1.36``) and repo digests (``docker.io/library/busybox@sha256:...``);
a name belongs to one image at a time, so pulling a tag that moved re-points the name and may leave the old
image without names (still listed, as containerd does, until removed or collected).

ImageStatus and ListImages are on the kubelet's hot path, so the catalog keeps the images and their names in
memory too: loaded from the store on first use, and after every write the records it touched are read back
inside the same transaction and published (the store stays the truth; the store's one thread orders the
writes, so memory follows them in order). Blobs, snapshots and users stay in SQL only.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass, field

from moorage.store.db import Store


@dataclass(frozen=True)
class Layer:
    chain_id: str
    diff_id: str
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ImageRecord:
    id: str
    manifest_digest: str
    size: int
    config: bytes
    names: tuple[str, ...] = ()
    layers: tuple[Layer, ...] = ()
    pulled_at: int = 0

    @property
    def repo_tags(self) -> list[str]:
        return sorted(n for n in self.names if "@" not in n)

    @property
    def repo_digests(self) -> list[str]:
        return sorted(n for n in self.names if "@" in n)


@dataclass
class _Memory:
    """The images by id and by name; ``generation`` moves with every change (for views built from them)."""

    images: dict[str, ImageRecord] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    ordered: list[ImageRecord] | None = None

    def publish(self, records: list[ImageRecord], gone: set[str]) -> None:
        for image_id in gone:
            old = self.images.pop(image_id, None)
            for name in old.names if old else ():
                if self.names.get(name) == image_id:
                    del self.names[name]
        for record in records:
            old = self.images.get(record.id)
            for name in old.names if old else ():
                if self.names.get(name) == record.id:
                    del self.names[name]
            self.images[record.id] = record
            self.names.update((name, record.id) for name in record.names)
        self.generation += 1
        self.ordered = None


class Catalog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._memory: _Memory | None = None
        self._loading = asyncio.Lock()

    async def _loaded(self) -> _Memory:
        if self._memory is None:
            async with self._loading:
                if self._memory is None:
                    memory = _Memory()
                    memory.publish(await self.store.read(lambda db: _load(db, "", ())), set())
                    self._memory = memory
        return self._memory

    def _publish(self, records: list[ImageRecord], gone: set[str]) -> None:
        if self._memory is not None:  # else the first read loads what the store has by then
            self._memory.publish(records, gone)

    async def generation(self) -> int:
        return (await self._loaded()).generation

    async def save(self, image: ImageRecord, blobs: set[str]) -> None:
        """Persist an image with its layers and blobs, and point ``image.names`` at it, in one transaction."""

        def write(db: sqlite3.Connection) -> list[ImageRecord]:
            touched = {image.id} | {
                str(r[0])
                for name in image.names
                for r in db.execute("SELECT image_id FROM image_names WHERE name = ?", (name,))
            }
            db.execute(
                "INSERT INTO images(id, manifest_digest, size, pinned, config, pulled_at) VALUES (?, ?, ?, 0, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET manifest_digest = excluded.manifest_digest, size = excluded.size, "
                "pulled_at = excluded.pulled_at",
                (image.id, image.manifest_digest, image.size, image.config.decode(), time.time_ns()),
            )
            db.execute("DELETE FROM image_layers WHERE image_id = ?", (image.id,))
            db.executemany(
                "INSERT INTO image_layers VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (image.id, i, la.chain_id, la.diff_id, la.digest, la.size, la.media_type)
                    for i, la in enumerate(image.layers)
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO image_blobs(image_id, digest) VALUES (?, ?)", [(image.id, d) for d in blobs]
            )
            db.executemany(
                "INSERT INTO image_names(name, image_id) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                [(name, image.id) for name in image.names],
            )
            marks = ", ".join("?" * len(touched))
            return _load(db, f"WHERE id IN ({marks})", tuple(sorted(touched)))  # as stored, names moved

        self._publish(await self.store.write(write), set())

    async def get(self, image_id: str) -> ImageRecord | None:
        return (await self._loaded()).images.get(image_id)

    async def all(self) -> list[ImageRecord]:
        """Every image, by id (a new list the caller may keep)."""
        memory = await self._loaded()
        if memory.ordered is None:
            memory.ordered = sorted(memory.images.values(), key=lambda r: r.id)
        return list(memory.ordered)

    async def id_by_name(self, name: str) -> str | None:
        return (await self._loaded()).names.get(name)

    async def ids_by_prefix(self, prefix: str) -> list[str]:
        """Up to two ids starting with ``prefix`` (two: it is ambiguous)."""
        return sorted(i for i in (await self._loaded()).images if i.startswith(prefix))[:2]

    async def users(self, image_id: str) -> list[str]:
        """Ids of the containers created from the image, or mounting it as an image volume."""
        rows = await self.store.read(
            lambda db: db.execute(
                "SELECT id FROM containers WHERE image_id = ? OR EXISTS "
                "(SELECT 1 FROM json_each(containers.status, '$.image_volumes') WHERE value = ?)",
                (image_id, image_id),
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

    async def delete(self, image_id: str) -> None:
        await self.store.write(lambda db: db.execute("DELETE FROM images WHERE id = ?", (image_id,)))
        self._publish([], {image_id})

    async def referenced(self) -> tuple[set[str], set[str]]:
        """The blob digests and chain ids some image still needs."""

        def query(db: sqlite3.Connection) -> tuple[set[str], set[str]]:
            blobs = {str(r[0]) for r in db.execute("SELECT DISTINCT digest FROM image_blobs")}
            chains = {str(r[0]) for r in db.execute("SELECT DISTINCT chain_id FROM image_layers")}
            return blobs, chains

        return await self.store.read(query)

    async def add_snapshot(self, chain_id: str, size: int, inodes: int) -> None:
        await self.store.write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO snapshots(chain_id, size, inodes, created_at) VALUES (?, ?, ?, ?)",
                (chain_id, size, inodes, time.time_ns()),
            )
        )

    async def snapshots(self) -> dict[str, tuple[int, int]]:
        rows = await self.store.read(lambda db: db.execute("SELECT chain_id, size, inodes FROM snapshots").fetchall())
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    async def forget_snapshots(self, chain_ids: list[str]) -> None:
        await self.store.write(
            lambda db: db.executemany("DELETE FROM snapshots WHERE chain_id = ?", [(c,) for c in chain_ids])
        )


def _load(db: sqlite3.Connection, where: str, args: tuple[str, ...]) -> list[ImageRecord]:
    rows = db.execute(f"SELECT id, manifest_digest, size, config, pulled_at FROM images {where} ORDER BY id", args)
    records = []
    for image_id, manifest_digest, size, config, pulled_at in rows.fetchall():
        names = tuple(
            str(r[0]) for r in db.execute("SELECT name FROM image_names WHERE image_id = ? ORDER BY name", (image_id,))
        )
        layers = tuple(
            Layer(*row)
            for row in db.execute(
                "SELECT chain_id, diff_id, digest, size, media_type FROM image_layers WHERE image_id = ? "
                "ORDER BY position",
                (image_id,),
            )
        )
        records.append(
            ImageRecord(image_id, manifest_digest, int(size), str(config).encode(), names, layers, int(pulled_at))
        )
    return records


def config_json(record: ImageRecord) -> dict[str, object]:
    doc = json.loads(record.config)
    return doc if isinstance(doc, dict) else {}
