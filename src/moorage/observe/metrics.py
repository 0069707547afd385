"""Prometheus metrics of the daemon, served on ``metrics.address`` when it is set."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPC_REQUESTS = Counter("moorage_grpc_requests", "CRI RPCs answered, by method and gRPC status code", ["method", "code"])
RPC_SECONDS = Histogram(
    "moorage_grpc_request_duration_seconds",
    "Time to answer a CRI RPC, by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


_RPC_CHILDREN: dict[tuple[str, str], tuple[Counter, Histogram]] = {}


def observe_rpc(method: str, code: str, seconds: float) -> None:
    """Count and time one RPC; the labelled series are looked up once per method and code (every RPC is here)."""
    children = _RPC_CHILDREN.get((method, code))
    if children is None:
        children = RPC_REQUESTS.labels(method=method, code=code), RPC_SECONDS.labels(method=method)
        _RPC_CHILDREN[(method, code)] = children
    children[0].inc()
    children[1].observe(seconds)


def serve(address: str) -> tuple[str, int]:
    """Start the /metrics HTTP server in a background thread; returns the bound (host, port)."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    server, _thread = start_http_server(int(port), addr=host)
    bound = server.server_address
    return str(bound[0]), int(bound[1])
