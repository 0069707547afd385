"""Image records in the metadata store: images, their names, layers and blobs, and snapshot usage.

An image is keyed by its id, the digest of its config (what Kubernetes calls the image ref). Its names are
repo tags (``docker.io/library/busybox:1.36``) and repo digests (``docker.io/library/busybox@sha256:...``);
a name belongs to one image at a time, so pulling a tag that moved re-points the name and may leave the old
image without names (still listed, as containerd does, until removed or collected).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

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


class Catalog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def save(self, image: ImageRecord, blobs: set[str]) -> None:
        """Persist an image with its layers and blobs, and point ``image.names`` at it, in one transaction."""

        def write(db: sqlite3.Connection) -> None:
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

        await self.store.write(write)

    async def get(self, image_id: str) -> ImageRecord | None:
        records = await self.store.read(lambda db: _load(db, "WHERE id = ?", (image_id,)))
        return records[0] if records else None

    async def all(self) -> list[ImageRecord]:
        return await self.store.read(lambda db: _load(db, "", ()))

    async def id_by_name(self, name: str) -> str | None:
        row = await self.store.read(
            lambda db: db.execute("SELECT image_id FROM image_names WHERE name = ?", (name,)).fetchone()
        )
        return str(row[0]) if row else None

    async def ids_by_prefix(self, prefix: str) -> list[str]:
        rows = await self.store.read(
            lambda db: db.execute(
                "SELECT id FROM images WHERE substr(id, 1, ?) = ? LIMIT 2", (len(prefix), prefix)
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

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
