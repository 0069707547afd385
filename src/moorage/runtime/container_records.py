"""The containers' records: persisted in the store, published in the in-memory index, announced as events.

Every change goes store first, then index, then event (STYLE.md, "State"): a reader never sees a record the
store could lose, and an event subscriber never hears of a change before a reader could see it.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time

from moorage.errors import AlreadyExists, NotFound
from moorage.runtime import events
from moorage.runtime.events import Event, EventBus
from moorage.state.index import Index
from moorage.state.models import (
    CONTAINER_CREATED,
    CONTAINER_CREATING,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    ContainerRecord,
    ContainerStatus,
)
from moorage.store.db import Store

EVENT_OF = {CONTAINER_CREATED: events.CREATED, CONTAINER_RUNNING: events.STARTED, CONTAINER_EXITED: events.STOPPED}
COLUMNS = "id, sandbox_id, name, state, created_at, image_id, config, status"


class ContainerRecords:
    def __init__(self, store: Store, bus: EventBus) -> None:
        self.store = store
        self.bus = bus
        self.index: Index[ContainerRecord] = Index("container")

    async def load(self) -> None:
        """Fill the index from the store (start-up, before anything is served or recovered)."""
        self.index.load(await self.store.read(lambda db: _select(db, "", ())))

    async def get(self, container_id: str) -> ContainerRecord:
        record = self.index.get(container_id)
        if record is None:
            raise NotFound(f"container {container_id!r} not found")
        return record

    def all(self, sandbox_id: str = "") -> list[ContainerRecord]:
        return self.index.all(lambda r: r.sandbox_id == sandbox_id) if sandbox_id else self.index.all()

    async def insert(self, record: ContainerRecord) -> None:
        """Store a new record, reserving its name (the kubelet relies on names being unique per pod)."""

        def write(db: sqlite3.Connection) -> None:
            holder = db.execute("SELECT id FROM containers WHERE name = ?", (record.name,)).fetchone()
            if holder:
                raise AlreadyExists(f"container name {record.name!r} is already reserved for {holder[0]}")
            db.execute(
                f"INSERT INTO containers({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.sandbox_id,
                    record.name,
                    record.state,
                    record.created_at,
                    record.image_id,
                    record.config,
                    record.status.to_json(),
                ),
            )

        await self.store.write(write)
        self.index.put(record)

    async def save(self, record: ContainerRecord) -> None:
        """Store a record's new state and status; announce the move."""
        await self.store.write(
            lambda db: db.execute(
                "UPDATE containers SET state = ?, status = ? WHERE id = ?",
                (record.state, record.status.to_json(), record.id),
            )
        )
        before = self.index.get(record.id)
        self.index.put(record)
        kind = EVENT_OF.get(record.state)
        if kind is not None and (before is None or before.state != record.state):
            self.bus.publish(Event(kind, record.id, record.sandbox_id, time.time_ns()))

    async def save_config(self, container_id: str, config: bytes) -> None:
        """Store a container's changed config (UpdateContainerResources keeps the new limits in it)."""
        await self.store.write(
            lambda db: db.execute("UPDATE containers SET config = ? WHERE id = ?", (config, container_id))
        )
        self.index.put(dataclasses.replace(await self.get(container_id), config=config))

    async def delete(self, container_id: str) -> None:
        await self.store.write(lambda db: db.execute("DELETE FROM containers WHERE id = ?", (container_id,)))
        record = self.index.get(container_id)
        self.index.drop(container_id)
        if record is not None and record.state != CONTAINER_CREATING:
            self.bus.publish(Event(events.DELETED, container_id, record.sandbox_id, time.time_ns()))


def _select(db: sqlite3.Connection, where: str, args: tuple[str, ...]) -> list[ContainerRecord]:
    rows = db.execute(f"SELECT {COLUMNS} FROM containers {where} ORDER BY created_at", args).fetchall()
    return [
        ContainerRecord(r[0], r[1], r[2], r[3], int(r[4]), r[5], bytes(r[6]), ContainerStatus.from_json(r[7]))
        for r in rows
    ]
