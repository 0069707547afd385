"""Ordered, numbered schema migrations of the metadata store.

The schema version lives in SQLite's ``PRAGMA user_version``. Migration N takes a store at version N-1 to
version N inside one transaction, so a crash mid-migration leaves the store at N-1 and the next start runs
it again. Never edit a migration that has shipped: append a new one, and a test for it.

The schema as of the last migration::

    sandboxes   id PK │ name UNIQUE │ state │ created_at (ns) │ config BLOB │ status JSON
      ▲                   config: a serialized runtime.v1.PodSandboxConfig, byte for byte as the kubelet sent it
      │ sandbox_id        status: the mutable part (pid, netns path, IPs, exit times), rewritten on change
    containers  id PK │ sandbox_id FK │ name UNIQUE │ state │ created_at │ image_id │ config BLOB │ status JSON
                                                                 │ config: a serialized runtime.v1.ContainerConfig
                                                                 ▼
    images      id PK (config digest) │ manifest_digest │ size │ pinned │ config JSON │ pulled_at
      ▲
      │ image_id
    image_names name PK (repo tag or repo digest) │ image_id FK
    image_layers image_id FK │ position │ chain_id │ diff_id │ digest │ size │ media_type   (PK image_id, position)
    image_blobs  image_id FK │ digest          the content-store blobs an image keeps alive (PK both)
    snapshots    chain_id PK │ size │ inodes │ created_at      committed layer directories and their usage

    settings    key PK │ value JSON       node-wide values the kubelet set, e.g. the pod CIDR
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _execute_all(db: sqlite3.Connection, script: str) -> None:
    """Run ';'-separated DDL statements one by one: executescript() would COMMIT the migration's transaction."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1_initial(db: sqlite3.Connection) -> None:
    _execute_all(
        db,
        """
        CREATE TABLE sandboxes (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            state       TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            config      BLOB NOT NULL,
            status      TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE containers (
            id          TEXT PRIMARY KEY,
            sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id),
            name        TEXT NOT NULL UNIQUE,
            state       TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            image_id    TEXT NOT NULL,
            config      BLOB NOT NULL,
            status      TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
        CREATE TABLE images (
            id              TEXT PRIMARY KEY,
            manifest_digest TEXT NOT NULL,
            size            INTEGER NOT NULL,
            pinned          INTEGER NOT NULL DEFAULT 0,
            config          TEXT NOT NULL,
            pulled_at       INTEGER NOT NULL
        );
        CREATE TABLE image_names (
            name      TEXT PRIMARY KEY,
            image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
        );
        CREATE INDEX image_names_by_image ON image_names(image_id);
        CREATE TABLE settings (
            key    TEXT PRIMARY KEY,
            value  TEXT NOT NULL
        )
        """,
    )


def _v2_image_layers(db: sqlite3.Connection) -> None:
    _execute_all(
        db,
        """
        CREATE TABLE image_layers (
            image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            position    INTEGER NOT NULL,
            chain_id    TEXT NOT NULL,
            diff_id     TEXT NOT NULL,
            digest      TEXT NOT NULL,
            size        INTEGER NOT NULL,
            media_type  TEXT NOT NULL,
            PRIMARY KEY (image_id, position)
        );
        CREATE INDEX image_layers_by_chain ON image_layers(chain_id);
        CREATE TABLE image_blobs (
            image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            digest    TEXT NOT NULL,
            PRIMARY KEY (image_id, digest)
        );
        CREATE INDEX image_blobs_by_digest ON image_blobs(digest);
        CREATE TABLE snapshots (
            chain_id    TEXT PRIMARY KEY,
            size        INTEGER NOT NULL,
            inodes      INTEGER NOT NULL,
            created_at  INTEGER NOT NULL
        )
        """,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "pods, containers, images, image names and node settings", _v1_initial),
    Migration(2, "image layers, the blobs images keep, snapshot usage", _v2_image_layers),
)

LATEST = MIGRATIONS[-1].version
