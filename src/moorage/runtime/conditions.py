"""RuntimeReady and NetworkReady: what Status tells the kubelet about this node's runtime.

The kubelet keeps a node NotReady while either is false and shows the reason and message to the operator,
so each names what is missing and where moorage looked.
"""

from __future__ import annotations

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


def runtime_condition(config: Config) -> Condition:
    handler = config.runtime.default_handler
    wanted = {
        f"runtime.handlers.{handler}.path": config.runtime.handlers[handler].path,
        "runtime.conmon": config.runtime.conmon,
    }
    missing = [f"{value} ({name})" for name, value in wanted.items() if binaries.find_binary(value) is None]
    if missing:
        return Condition(
            RUNTIME_READY, False, "RuntimeBinaryMissing", "not found or not executable: " + ", ".join(missing)
        )
    return Condition(RUNTIME_READY, True)
