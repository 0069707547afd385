"""The Stream RPCs (StreamPodSandboxes, StreamContainers, StreamImages, the stats and metrics ones) send what
their List form would, in batches of at least one item each (KEP-5825): none at all when there is nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

STREAM_BATCH = 100


def batches(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), STREAM_BATCH):
        yield items[start : start + STREAM_BATCH]
