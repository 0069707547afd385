"""RuntimeReady and NetworkReady: what Status tells the kubelet about this node's runtime.

The kubelet keeps a node NotReady while either is false and shows the reason and message to the operator,
so each names what is missing and where moorage looked.

The kubelet asks for Status every few seconds. Where each configured binary was found is remembered per
config (a reloaded config starts afresh); each call only checks that the file found is still an executable
file, and looks again (``$PATH``) when it is not, so a binary removed or installed later still shows at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from moorage.config import Config
from moorage.node import binaries

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


class RuntimeCondition:
    """RuntimeReady for one daemon: remembers where each configured binary was found, for the config it was
    found with (owned by the service answering Status, so two daemons in one process never share it)."""

    def __init__(self) -> None:
        self._found: dict[str, str] = {}
        """Configured binary → the file it was found as, with :attr:`_found_for`."""
        self._found_for: Config | None = None

    def _present(self, binary: str) -> bool:
        """:func:`binaries.find_binary` finds ``binary``: the file found last time is checked, else it is looked up."""
        known = self._found.get(binary)
        if known is not None and os.path.isfile(known) and os.access(known, os.X_OK):
            return True
        found = binaries.find_binary(binary)
        if found is None:
            self._found.pop(binary, None)
            return False
        self._found[binary] = str(found)
        return True

    def __call__(self, config: Config) -> Condition:
        if self._found_for is not config:  # a reloaded config: every binary is looked up again
            self._found.clear()
            self._found_for = config
        handler = config.runtime.default_handler
        wanted = {
            f"runtime.handlers.{handler}.path": config.runtime.handlers[handler].path,
            "runtime.conmon": config.runtime.conmon,
        }
        missing = [f"{value} ({name})" for name, value in wanted.items() if not self._present(value)]
        if missing:
            return Condition(
                RUNTIME_READY, False, "RuntimeBinaryMissing", "not found or not executable: " + ", ".join(missing)
            )
        return Condition(RUNTIME_READY, True)
