"""Pod and container records: persisted in the store, published in the in-memory index, announced as events.

One layer for both (STYLE.md, "State"): every change goes store first, then index, then event, so a reader never
sees a record the store could lose and an event subscriber never hears of a change before a reader could see it.
A new record reserves its name (the kubelet relies on a pod's name, and a container's within its pod, being
unique until removed). What is particular to pods or containers is a :class:`Table`: the SQL table and its rows
(:data:`POD_SANDBOXES`, :data:`CONTAINERS`) and which events a move announces (:mod:`moorage.state.events`).

Lifecycle of a record::

    records = Records(store, POD_SANDBOXES, bus)
    await records.load()                      # start-up: the index from the store
    await records.insert(record)              # CREATING: stored, name reserved, no event yet
    await records.save(record.moved(READY))   # state and status stored, then CREATED and STARTED announced
    await records.patch(id, "config = ?", (blob,), lambda r: replace(r, config=blob))  # one column only
    await records.delete(id)                  # gone, DELETED announced (unless it never left CREATING)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from moorage.errors import AlreadyExists, NotFound
from moorage.state import events
from moorage.state.events import Event, EventBus
from moorage.state.index import Index
from moorage.state.models import CREATING, ContainerRecord, ContainerStatus, SandboxRecord, SandboxStatus
from moorage.store.db import Store


class Status(Protocol):
    def to_json(self) -> str: ...


class Record(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def created_at(self) -> int: ...
    @property
    def status(self) -> Status: ...


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Table(Generic[R]):
    name: str
    """The SQL table; its first column is ``id`` and it has ``name``, ``state``, ``created_at`` and ``status``."""
    kind: str
    """What a record is called in messages: "pod sandbox", "container"."""
    columns: tuple[str, ...]
    to_row: Callable[[R], tuple[Any, ...]]
    from_row: Callable[[Sequence[Any]], R]
    announced: Callable[[str | None, str], tuple[int, ...]]
    """The event kinds a move from a state (None: a new record) to another announces."""
    pod_of: Callable[[R], str]
    """The pod an event about a record names."""


class Records(Generic[R]):
    def __init__(self, store: Store, table: Table[R], bus: EventBus) -> None:
        self.store = store
        self.table = table
        self.bus = bus
        self.index: Index[R] = Index(table.kind)
        self._select = f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY created_at"

    async def load(self) -> None:
        """Fill the index from the store (start-up, before anything is served or recovered)."""
        rows = await self.store.read(lambda db: db.execute(self._select).fetchall())
        self.index.load(self.table.from_row(row) for row in rows)

    async def get(self, record_id: str) -> R:
        record = self.index.get(record_id)
        if record is None:
            raise NotFound(f"{self.table.kind} {record_id!r} not found")
        return record

    def all(self, where: Callable[[R], bool] | None = None) -> list[R]:
        return self.index.all(where)

    async def insert(self, record: R) -> None:
        """Store a new record, reserving its name."""
        table = self.table
        marks = ", ".join("?" for _ in table.columns)

        def write(db: sqlite3.Connection) -> None:
            holder = db.execute(f"SELECT id FROM {table.name} WHERE name = ?", (record.name,)).fetchone()
            if holder:
                raise AlreadyExists(f"{table.kind} name {record.name!r} is already reserved for {holder[0]}")
            db.execute(f"INSERT INTO {table.name}({', '.join(table.columns)}) VALUES ({marks})", table.to_row(record))

        await self.store.write(write)
        self.index.put(record)

    async def save(self, record: R) -> None:
        """Store a record's new state and status, publish it, and announce the move."""
        await self.store.write(
            lambda db: db.execute(
                f"UPDATE {self.table.name} SET state = ?, status = ? WHERE id = ?",
                (record.state, record.status.to_json(), record.id),
            )
        )
        before = self.index.get(record.id)
        self.index.put(record)
        if before is None or before.state != record.state:
            now = time.time_ns()
            for kind in self.table.announced(before.state if before else None, record.state):
                self.bus.publish(Event(kind, record.id, self.table.pod_of(record), now))

    async def patch(self, record_id: str, assignment: str, args: tuple[Any, ...], changed: Callable[[R], R]) -> None:
        """Store one part of a record (``assignment`` is the SQL after SET) and publish ``changed`` of it: a
        concurrent :meth:`save` of its state keeps what it wrote."""
        await self.get(record_id)
        await self.store.write(
            lambda db: db.execute(f"UPDATE {self.table.name} SET {assignment} WHERE id = ?", (*args, record_id))
        )
        if (current := self.index.get(record_id)) is not None:
            self.index.put(changed(current))

    async def delete(self, record_id: str) -> None:
        """Forget a record (no error if it is gone); announce it unless it never left CREATING."""
        await self.store.write(lambda db: db.execute(f"DELETE FROM {self.table.name} WHERE id = ?", (record_id,)))
        record = self.index.get(record_id)
        self.index.drop(record_id)
        if record is not None and record.state != CREATING:
            self.bus.publish(Event(events.DELETED, record_id, self.table.pod_of(record), time.time_ns()))


POD_SANDBOXES: Table[SandboxRecord] = Table(
    name="sandboxes",
    kind="pod sandbox",
    columns=("id", "name", "state", "created_at", "config", "status"),
    to_row=lambda r: (r.id, r.name, r.state, r.created_at, r.config, r.status.to_json()),
    from_row=lambda r: SandboxRecord(r[0], r[1], r[2], int(r[3]), bytes(r[4]), SandboxStatus.from_json(r[5])),
    announced=events.of_pod_move,
    pod_of=lambda r: r.id,
)

CONTAINERS: Table[ContainerRecord] = Table(
    name="containers",
    kind="container",
    columns=("id", "sandbox_id", "name", "state", "created_at", "image_id", "config", "status"),
    to_row=lambda r: (r.id, r.sandbox_id, r.name, r.state, r.created_at, r.image_id, r.config, r.status.to_json()),
    from_row=lambda r: ContainerRecord(
        r[0], r[1], r[2], r[3], int(r[4]), r[5], bytes(r[6]), ContainerStatus.from_json(r[7])
    ),
    announced=events.of_container_move,
    pod_of=lambda r: r.sandbox_id,
)
