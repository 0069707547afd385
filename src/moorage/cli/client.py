"""A CRI client over the runtime's unix socket, as crictl is: what the CLI and the tests talk through."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

import grpc

from moorage.api.cri import pb, pb_grpc

DEFAULT_ENDPOINT = "unix:///run/moorage/moorage.sock"
ADMIN_SERVICE = "moorage.v1.Images"  # moorage.api.admin.SERVICE; the client does not import the daemon


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

    # --- images ---------------------------------------------------------------------------------------------

    def pull_image(self, image: str, auth: pb.AuthConfig | None = None, timeout: float | None = None) -> str:
        request = pb.PullImageRequest(image=pb.ImageSpec(image=image), auth=auth)
        return self.images.PullImage(request, timeout=timeout).image_ref

    def image_status(self, image: str, verbose: bool = False) -> pb.ImageStatusResponse:
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=verbose)
        return self.images.ImageStatus(request, timeout=self.timeout)

    def list_images(self, image: str = "") -> list[pb.Image]:
        request = pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(image=image)) if image else None)
        return list(self.images.ListImages(request, timeout=self.timeout).images)

    def remove_image(self, image: str) -> None:
        self.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)), timeout=self.timeout)

    def image_fs_info(self) -> pb.ImageFsInfoResponse:
        return self.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=self.timeout)

    # --- moorage's own RPCs (see moorage.api.admin) ---------------------------------------------------------

    def pull_with_progress(self, image: str, username: str = "", password: str = "") -> Iterator[dict[str, Any]]:
        """Pull, yielding progress snapshots and finally ``{"image_id": ...}``."""
        call = self._channel.unary_stream(
            f"/{ADMIN_SERVICE}/Pull", request_serializer=_encode, response_deserializer=_decode
        )
        yield from call({"image": image, "username": username, "password": password})

    def import_archive(self, path: str, timeout: float | None = None) -> dict[str, Any]:
        call = self._channel.unary_unary(
            f"/{ADMIN_SERVICE}/Import", request_serializer=_encode, response_deserializer=_decode
        )
        result: dict[str, Any] = call({"path": path}, timeout=timeout)
        return result


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _decode(data: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(data)
    return message
