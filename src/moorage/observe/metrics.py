"""Prometheus metrics of the daemon, served on ``metrics.address`` when it is set.

prometheus_client is imported by :func:`serve` only: without an address nothing could read the counts, so RPCs
are not counted, and the daemon does not pay the import (about 40 ms of its start) to answer on its socket.
"""

from __future__ import annotations

from collections.abc import Callable

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_observers: list[Callable[[str, str, float], None]] = []  # one once the metrics are served


def observe_rpc(method: str, code: str, seconds: float) -> None:
    """Count and time one RPC, once the metrics are served (every RPC is here)."""
    if _observers:
        _observers[0](method, code, seconds)


def serve(address: str) -> tuple[str, int]:
    """Start counting RPCs and the /metrics HTTP server in a background thread; returns the bound (host, port)."""
    from prometheus_client import Counter, Histogram, start_http_server  # noqa: PLC0415 - see the module docstring

    if not _observers:
        requests = Counter(
            "moorage_grpc_requests", "CRI RPCs answered, by method and gRPC status code", ["method", "code"]
        )
        durations = Histogram(
            "moorage_grpc_request_duration_seconds", "Time to answer a CRI RPC, by method", ["method"], buckets=BUCKETS
        )
        children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

        def observe(method: str, code: str, seconds: float) -> None:
            series = children.get((method, code))  # the labelled series, looked up once per method and code
            if series is None:
                series = children[(method, code)] = requests.labels(method=method, code=code), durations.labels(method)
            series[0].inc()
            series[1].observe(seconds)

        _observers.append(observe)
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    server, _thread = start_http_server(int(port), addr=host)
    bound = server.server_address
    return str(bound[0]), int(bound[1])
