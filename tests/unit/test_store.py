from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moorage.errors import StoreError
from moorage.store import db as store_db
from moorage.store.db import Store
from moorage.store.migrations import LATEST, MIGRATIONS


def tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {n: [c[1] for c in conn.execute(f"PRAGMA table_info({n})")] for n in names}


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_migration_1_creates_the_schema(tmp_path: Path) -> None:
    conn = store_db.connect(tmp_path / "m.db")
    assert store_db.schema_version(conn) == LATEST
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    schema = tables(conn)
    assert schema["sandboxes"] == ["id", "name", "state", "created_at", "config", "status"]
    assert schema["containers"] == ["id", "sandbox_id", "name", "state", "created_at", "image_id", "config", "status"]
    assert schema["images"] == ["id", "manifest_digest", "size", "pinned", "config", "pulled_at"]
    assert schema["image_names"] == ["name", "image_id"]
    assert schema["settings"] == ["key", "value"]


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    conn = store_db.connect(path)
    conn.execute("INSERT INTO settings VALUES ('k', '1')")
    conn.close()
    conn = store_db.connect(path)
    assert conn.execute("SELECT value FROM settings WHERE key = 'k'").fetchone() == ("1",)
    assert store_db.schema_version(conn) == LATEST


def test_a_store_from_a_newer_moorage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {LATEST + 1}, newer than this moorage"):
        store_db.connect(path)


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=str(path)):
        store_db.connect(path)


def test_settings_round_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(tmp_path)
        await store.open()
        try:
            assert await store.get_setting("pod_cidr", []) == []
            await store.set_setting("pod_cidr", ["10.0.0.0/24"])
            await store.set_setting("pod_cidr", ["10.1.0.0/24"])
            assert await store.get_setting("pod_cidr") == ["10.1.0.0/24"]

        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(tmp_path)
        await store.open()
        try:

            def half(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO settings VALUES ('a', '1')")
                raise RuntimeError("boom")

            with pytest.raises(RuntimeError):
                await store.write(half)
            assert await store.get_setting("a") is None
        finally:
            await store.close()

    asyncio.run(scenario())


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from moorage.observe.daemon_log import configure
    from moorage.store.db import connect, transaction
    configure("error", "text")
    conn = connect(Path(sys.argv[1]))
    i = 0
    while True:
        i += 1
        with transaction(conn):
            conn.execute("INSERT INTO settings VALUES (?, ?)", (f"k{i}", str(i)))
            conn.execute("INSERT OR REPLACE INTO settings VALUES ('last', ?)", (str(i),))
        print(i, flush=True)
    """
)


@pytest.mark.parametrize("after_commits", [1, 50, 400])
def test_sigkill_mid_write_never_leaves_the_store_unreadable(tmp_path: Path, after_commits: int) -> None:
    path = tmp_path / "m.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acknowledged = 0
    while acknowledged < after_commits:
        acknowledged = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    conn = store_db.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    last = int(conn.execute("SELECT value FROM settings WHERE key = 'last'").fetchone()[0])
    # Every acknowledged commit survived, and each transaction is whole: k1..k<last> and nothing more.
    assert last >= acknowledged
    count = conn.execute("SELECT count(*) FROM settings WHERE key != 'last'").fetchone()[0]
    assert count == last
