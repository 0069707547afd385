"""The one-use URLs of the Exec, Attach and PortForward RPCs: a random token names a request waiting for its
connection; it is good for one connection and expires after :data:`TOKEN_TTL` seconds, as in the kubelet's own
streaming server."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from moorage.cri import pb
from moorage.errors import ResourceExhausted

TOKEN_TTL = 60.0
MAX_IN_FLIGHT = 1000

Request = pb.ExecRequest | pb.AttachRequest | pb.PortForwardRequest


@dataclass(frozen=True)
class Pending:
    kind: str  # "exec", "attach" or "portforward"
    request: Request
    expires: float


class Tokens:
    """Requests waiting for their connection: single use, expiring, bounded."""

    def __init__(self) -> None:
        self._pending: OrderedDict[str, Pending] = OrderedDict()

    def add(self, kind: str, request: Request) -> str:
        self._expire()
        if len(self._pending) >= MAX_IN_FLIGHT:
            raise ResourceExhausted(f"{MAX_IN_FLIGHT} streaming requests are waiting for their connection already")
        token = secrets.token_urlsafe(12)
        self._pending[token] = Pending(kind, request, time.monotonic() + TOKEN_TTL)
        return token

    def peek(self, kind: str, token: str) -> Request | None:
        self._expire()
        pending = self._pending.get(token)
        return pending.request if pending is not None and pending.kind == kind else None

    def take(self, kind: str, token: str) -> Request | None:
        request = self.peek(kind, token)
        if request is not None:
            del self._pending[token]
        return request

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending and next(iter(self._pending.values())).expires < now:
            self._pending.popitem(last=False)
