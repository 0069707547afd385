"""Who may hold a connection to the streaming server, and for how long before it shows a valid token.

The streaming port is open to every local user (and, with a non-loopback ``streaming.address``, to the
network), while the URLs' tokens come only from the CRI. Until a connection has presented a token it is a
stranger's: such connections are bounded per peer address and in all, and each gets a short deadline to send
its request (:data:`HANDSHAKE_TIMEOUT`). Every connection, served or not, counts against a budget taken from
the process's descriptor limit, so that the CRI socket, the store and the runtimes' pipes always have
descriptors left. A refused connection is reset at once; refusals are logged once per :data:`LOG_INTERVAL`
with how many there were, not once each.

Lifecycle::

    admission = Admission.for_open_files(open_files)  # the process's RLIMIT_NOFILE
    if not admission.admit(peer):   # False: over a bound; the caller resets the connection
        ...
    admission.authenticated(peer)   # the token was good: no longer a stranger (still counts in the budget)
    admission.release(peer)         # the connection is closed
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

HANDSHAKE_TIMEOUT = 5.0  # to send the request line and headers with a token
MAX_STRANGERS = 256  # connections without a valid token yet, in all
MAX_STRANGERS_PER_PEER = 64
MAX_CONNECTIONS = 4096
RESERVED_FRACTION = 2  # half the descriptor limit stays for everything but streaming connections
FDS_PER_CONNECTION = 4  # the socket, and an exec's pipes or terminal
LOG_INTERVAL = 10.0


@dataclass
class Admission:
    max_connections: int
    max_strangers: int
    max_strangers_per_peer: int
    log_interval: float = LOG_INTERVAL
    _strangers: Counter[str] = field(default_factory=Counter)
    _stranger_total: int = 0
    _connections: int = 0
    _refused: int = 0
    _refused_peers: set[str] = field(default_factory=set)
    _logged_at: float = float("-inf")

    @classmethod
    def for_open_files(cls, open_files: int) -> Admission:
        """Bounds for a process allowed ``open_files`` descriptors."""
        connections = max(16, min(MAX_CONNECTIONS, open_files // RESERVED_FRACTION // FDS_PER_CONNECTION))
        strangers = min(MAX_STRANGERS, connections // 2)
        return cls(connections, strangers, min(MAX_STRANGERS_PER_PEER, strangers))

    def admit(self, peer: str) -> bool:
        """Count a new connection from ``peer`` as a stranger's, unless that passes a bound."""
        if (
            self._connections >= self.max_connections
            or self._stranger_total >= self.max_strangers
            or self._strangers[peer] >= self.max_strangers_per_peer
        ):
            self._refuse(peer)
            return False
        self._connections += 1
        self._stranger_total += 1
        self._strangers[peer] += 1
        return True

    def authenticated(self, peer: str) -> None:
        """``peer``'s connection showed a valid token: it leaves the strangers' bounds."""
        self._forget(peer)

    def release(self, peer: str, *, stranger: bool) -> None:
        """An admitted connection closed; ``stranger``: it never showed a valid token."""
        self._connections -= 1
        if stranger:
            self._forget(peer)

    @property
    def connections(self) -> int:
        return self._connections

    @property
    def strangers(self) -> int:
        return self._stranger_total

    def _forget(self, peer: str) -> None:
        self._stranger_total -= 1
        self._strangers[peer] -= 1
        if self._strangers[peer] <= 0:
            del self._strangers[peer]

    def _refuse(self, peer: str) -> None:
        self._refused += 1
        self._refused_peers.add(peer)
        now = time.monotonic()
        if now - self._logged_at >= self.log_interval:
            log.warning(
                "refusing streaming connections: too many without a valid token, or too many in all",
                refused=self._refused,
                peers=sorted(self._refused_peers)[:8],
                connections=self._connections,
                without_token=self._stranger_total,
                max_connections=self.max_connections,
                max_without_token=self.max_strangers,
                max_without_token_per_peer=self.max_strangers_per_peer,
                interval=self.log_interval,
            )
            self._logged_at = now
            self._refused = 0
            self._refused_peers.clear()
