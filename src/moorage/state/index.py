"""The in-memory index of pods or containers that every read is served from.

The kubelet relists every second (ListPodSandbox, ListContainers) and polls Status calls; they must answer from
memory, never wait behind a slow write, a disk flush or a monitor. The store stays the truth: a record is
persisted first and published here after the write returned (STYLE.md, "State"), and the index is rebuilt from
the store at start-up. Pure: no I/O, no locks (it lives on the event loop's thread).

Every change bumps :attr:`Index.generation`, so a reader may keep what it derived from the records (the CRI
messages, a whole serialized list) until the generation moves; the oldest-first order is kept the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from moorage.errors import AmbiguousId


class Indexed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> int: ...


R = TypeVar("R", bound=Indexed)


class Index(Generic[R]):
    def __init__(self, kind: str) -> None:
        self.kind = kind  # "pod sandbox", "container": for messages
        self._records: dict[str, R] = {}
        self.generation = 0
        """Bumped by every load, put and drop (never by reads)."""
        self._ordered: list[R] | None = None

    def load(self, records: Iterable[R]) -> None:
        self._records = {r.id: r for r in records}
        self._changed()

    def put(self, record: R) -> None:
        self._records[record.id] = record
        self._changed()

    def drop(self, record_id: str) -> None:
        if self._records.pop(record_id, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self.generation += 1
        self._ordered = None

    def get(self, record_id: str) -> R | None:
        return self._records.get(record_id)

    def resolve(self, ref: str) -> str | None:
        """The full id ``ref`` names, as itself or as a unique prefix (as crictl lets users type it).

        None when nothing matches; :class:`AmbiguousId` when a prefix matches more than one."""
        if ref in self._records:
            return ref
        matches = [record_id for record_id in self._records if record_id.startswith(ref)]
        if len(matches) > 1:
            raise AmbiguousId(f"{ref!r} is a prefix of more than one {self.kind} id; give more of it")
        return matches[0] if matches else None

    def all(self, where: Callable[[R], bool] | None = None) -> list[R]:
        """Records (that ``where`` accepts), oldest first: a new list the caller may keep."""
        if self._ordered is None:
            self._ordered = sorted(self._records.values(), key=lambda r: (r.created_at, r.id))
        return list(self._ordered) if where is None else [r for r in self._ordered if where(r)]

    def __len__(self) -> int:
        return len(self._records)
