from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.daemon import DaemonProcess


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    """A running daemon on its own temp root and socket; stopped and removed after the test."""
    d = DaemonProcess()
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def unstarted() -> Iterator[DaemonProcess]:
    """A daemon's temp paths and config, not started: the test writes its config and starts it."""
    d = DaemonProcess()
    try:
        yield d
    finally:
        d.cleanup()
