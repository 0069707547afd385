"""Pull progress (per layer bytes and state, for logs, the CLI's bars and the stall watchdog) and shared work
(one download or unpack per digest, however many pulls wait on it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class LayerProgress:
    digest: str
    size: int
    done: int = 0
    state: str = "waiting"
    """waiting, downloading, verifying, extracting, complete, or exists (already on the node)."""


class Progress:
    """What one pull has done so far. Subscribers get a snapshot at most every ``interval`` seconds."""

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self.layers: dict[str, LayerProgress] = {}
        self.last_activity = time.monotonic()
        self.busy = 0
        """Steps under way that move no bytes (unpacking, syncing); the stall watchdog waits for them."""
        self.finished = False
        self.error = ""
        self.image_id = ""
        self._changed = asyncio.Event()

    def layer(self, digest: str, size: int, state: str = "waiting") -> LayerProgress:
        entry = self.layers.setdefault(digest, LayerProgress(digest, size))
        entry.state = state
        self.touch()
        return entry

    def set_state(self, digest: str, state: str) -> None:
        if digest in self.layers:
            self.layers[digest].state = state
        self.touch()

    def add_bytes(self, digest: str, count: int) -> None:
        entry = self.layers[digest]
        entry.done += count
        entry.state = "downloading"
        self.touch()

    def touch(self) -> None:
        self.last_activity = time.monotonic()
        self._changed.set()

    def idle_seconds(self) -> float:
        return 0.0 if self.busy else time.monotonic() - self.last_activity

    def finish(self, image_id: str = "", error: str = "") -> None:
        self.finished, self.image_id, self.error = True, image_id, error
        self._changed.set()

    def snapshot(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "layers": [asdict(la) for la in self.layers.values()],
            "finished": self.finished,
            "image_id": self.image_id,
            "error": self.error,
        }

    async def watch(self, interval: float = 0.2) -> AsyncIterator[dict[str, Any]]:
        while True:
            await self._changed.wait()
            self._changed.clear()
            yield self.snapshot()
            if self.finished:
                return
            await asyncio.sleep(interval)


class SharedWork(Generic[T]):
    """At most one task per key; every caller for that key awaits the same task. The task is cancelled when
    the last caller waiting on it goes away (its pull failed or was cancelled), so nothing runs for nobody."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}
        self._waiters: dict[str, int] = {}

    def running(self) -> set[str]:
        return set(self._tasks)

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._tasks[key] = task
            self._waiters[key] = 0
            task.add_done_callback(lambda t: self._forget(key, t))
        self._waiters[key] += 1
        try:
            return await asyncio.shield(task)
        finally:
            if self._tasks.get(key) is task:  # still running: this caller stops waiting on it
                self._waiters[key] -= 1
                if self._waiters[key] == 0:
                    task.cancel()
                    await asyncio.wait({task})  # let it clean up before its last caller moves on

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
            del self._waiters[key]
        if not task.cancelled():
            task.exception()  # retrieved: awaiters got it already
