"""Container events for GetContainerEvents (the kubelet's evented PLEG): what changed, as it changes.

The domain publishes an :class:`Event` when a record moves (created, started, stopped, deleted) — for a pod
sandbox as for a container, with the sandbox's id as the container id, as containerd does. Each subscriber has
a bounded queue; one that falls behind by more than its backlog is cut off (its stream ends with
RESOURCE_EXHAUSTED) rather than slowing the runtime or growing without bound: the kubelet then relists and
subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from moorage.state import models

CREATED, STARTED, STOPPED, DELETED = 0, 1, 2, 3  # runtime.v1.ContainerEventType values
BACKLOG = 1024


@dataclass(frozen=True)
class Event:
    kind: int
    container_id: str
    sandbox_id: str
    at: int  # Unix nanoseconds


def of_pod_move(before: str | None, after: str) -> tuple[int, ...]:
    """A pod that became ready was created and started (as containerd announces it); one that stopped, stopped.
    Nothing is announced for a pod while it is made, nor for a stopped one saved again."""
    if before is None or before == models.NOTREADY:
        return ()
    return {models.READY: (CREATED, STARTED), models.NOTREADY: (STOPPED,)}.get(after, ())


def of_container_move(before: str | None, after: str) -> tuple[int, ...]:
    kinds = {models.CONTAINER_CREATED: CREATED, models.CONTAINER_RUNNING: STARTED, models.CONTAINER_EXITED: STOPPED}
    return (kinds[after],) if after in kinds else ()


class Overflow(Exception):
    """A subscriber fell more than its backlog behind."""


class Subscription:
    def __init__(self, backlog: int) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(backlog)
        self.overflowed = False

    async def next(self) -> Event:
        event = await self.queue.get()
        if event is None:
            raise Overflow(f"fell more than {self.queue.maxsize} events behind")
        return event


class EventBus:
    def __init__(self, backlog: int = BACKLOG) -> None:
        self._backlog = backlog
        self._subscribers: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        for sub in list(self._subscribers):
            if sub.queue.qsize() >= self._backlog - 1:  # keep one slot for the cut-off marker
                self._subscribers.discard(sub)
                sub.queue.put_nowait(None)
            else:
                sub.queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription(self._backlog)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    def __len__(self) -> int:
        return len(self._subscribers)
