"""A CRI client over the runtime's unix socket, as crictl is: what the CLI and the tests talk through."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import grpc

from moorage.api.cri import pb, pb_grpc

DEFAULT_ENDPOINT = "unix:///run/moorage/moorage.sock"


def channel_target(endpoint: str) -> str:
    """``unix:///path``, ``unix:/path`` or a bare ``/path`` → the gRPC target for that socket."""
    if endpoint.startswith("unix://"):
        return "unix:" + endpoint.removeprefix("unix://")
    if endpoint.startswith("unix:"):
        return endpoint
    if endpoint.startswith("/"):
        return "unix:" + endpoint
    raise ValueError(f"endpoint {endpoint!r} is not a unix socket (unix:///path/to.sock)")


class CriClient:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = grpc.insecure_channel(channel_target(endpoint))
        self.runtime = pb_grpc.RuntimeServiceStub(self._channel)
        self.images = pb_grpc.ImageServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def version(self) -> pb.VersionResponse:
        return self.runtime.Version(pb.VersionRequest(), timeout=self.timeout)

    def status(self, verbose: bool = False) -> pb.StatusResponse:
        return self.runtime.Status(pb.StatusRequest(verbose=verbose), timeout=self.timeout)

    def runtime_config(self) -> pb.RuntimeConfigResponse:
        return self.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=self.timeout)

    def update_pod_cidr(self, cidr: str) -> None:
        request = pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=cidr))
        )
        self.runtime.UpdateRuntimeConfig(request, timeout=self.timeout)
