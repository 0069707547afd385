"""The metadata store: one SQLite database in WAL mode under the daemon's root.

SQLite in WAL mode with ``synchronous=FULL`` makes every committed transaction durable and keeps the file
readable whatever moment the daemon is killed at: a SIGKILL loses at most the transaction in flight, never
the store. All access goes through one worker thread that owns the connection, so the asyncio loop never
blocks on disk and writes are serialized without locks of our own.

Callers persist first and publish in memory after :meth:`Store.write` returns (see STYLE.md, "State").
The schema and its migrations are in :mod:`moorage.store.migrations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from moorage.errors import StoreError
from moorage.store.migrations import LATEST, MIGRATIONS

log = structlog.get_logger(__name__)

T = TypeVar("T")

DB_NAME = "metadata.db"


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` and bring its schema up to date."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        migrate(db, path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"metadata store {path}: {exc}") from exc
    return db


def schema_version(db: sqlite3.Connection) -> int:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    current = schema_version(db)
    if current > LATEST:
        raise StoreError(
            f"metadata store {path} has schema version {current}, newer than this moorage understands "
            f"({LATEST}); run the moorage that wrote it, or a newer one"
        )
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        with transaction(db):
            migration.apply(db)
            db.execute(f"PRAGMA user_version = {migration.version:d}")
        log.info("store migrated", path=str(path), version=migration.version, summary=migration.summary)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the body raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Store:
    """Async front of the database: every call runs on the store's own thread."""

    def __init__(self, root: Path) -> None:
        self.path = root / DB_NAME
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moorage-store")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._db = await self._run(lambda: connect(self.path))

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the connection, outside any write transaction."""
        return await self._run(lambda: fn(self._connection()))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one durable transaction: all of it is stored, or none of it."""

        def run() -> T:
            with transaction(self._connection()) as db:
                return fn(db)

        return await self._run(run)

    # Node-wide settings -------------------------------------------------------------------------------------

    async def get_setting(self, key: str, default: Any = None) -> Any:
        row = await self.read(lambda db: db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone())
        return default if row is None else json.loads(row[0])

    async def set_setting(self, key: str, value: Any) -> None:
        encoded = json.dumps(value)
        await self.write(
            lambda db: db.execute(
                "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, encoded),
            )
        )

    # ---------------------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"metadata store {self.path} is not open")
        return self._db

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"metadata store {self.path}: {exc}") from exc
