"""A CRI client over the runtime's unix socket, as crictl is: what the CLI and the tests talk through."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import grpc

from moorage.cri import IMAGE_SERVICE, RUNTIME_SERVICE, pb

if TYPE_CHECKING:
    from google.protobuf.descriptor import ServiceDescriptor

    from moorage.cri import pb_grpc

DEFAULT_ENDPOINT = "unix:///run/moorage/moorage.sock"
MAX_RECEIVE = 64 << 20  # more than the kubelet takes (16 MiB), for the largest lists
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


class _Stub:
    """A CRI service's client stub as grpc's generated one (``pb_grpc.RuntimeServiceStub``...) makes it, each
    method made from the service's descriptor when first used: importing the generated module cost a client
    command about 9 ms where its bytecode is not cached, and it makes every method up front."""

    def __init__(self, channel: grpc.Channel, service: ServiceDescriptor) -> None:
        self._channel = channel
        self._service = service

    def __getattr__(self, name: str) -> Any:
        method = self._service.methods_by_name.get(name)
        if method is None:
            raise AttributeError(f"{self._service.name} has no method {name!r}")
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        make = self._channel.unary_stream if method.server_streaming else self._channel.unary_unary
        call = make(  # type: ignore[call-arg]  # grpc's typing lacks what its generated stubs pass
            f"/{self._service.full_name}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
            _registered_method=True,
        )
        setattr(self, name, call)
        return call


class CriClient:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            channel_target(endpoint), options=[("grpc.max_receive_message_length", MAX_RECEIVE)]
        )
        self.runtime = cast("pb_grpc.RuntimeServiceStub", _Stub(self._channel, RUNTIME_SERVICE))
        self.images = cast("pb_grpc.ImageServiceStub", _Stub(self._channel, IMAGE_SERVICE))

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

    # --- pods and containers -------------------------------------------------------------------------------

    def run_pod(self, config: pb.PodSandboxConfig, runtime_handler: str = "") -> str:
        request = pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self.runtime.RunPodSandbox(request, timeout=self.timeout).pod_sandbox_id

    def stop_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=self.timeout)

    def remove_pod(self, pod_id: str) -> None:
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=self.timeout)

    def pod_status(self, pod_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        request = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        return self.runtime.PodSandboxStatus(request, timeout=self.timeout)

    def list_pods(self, filter_: pb.PodSandboxFilter | None = None) -> list[pb.PodSandbox]:
        request = pb.ListPodSandboxRequest(filter=filter_)
        return list(self.runtime.ListPodSandbox(request, timeout=self.timeout).items)

    def create_container(
        self, pod_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig | None = None
    ) -> str:
        request = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config)
        return self.runtime.CreateContainer(request, timeout=self.timeout).container_id

    def start_container(self, container_id: str) -> None:
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=self.timeout)

    def stop_container(self, container_id: str, grace: int = 0) -> None:
        """Stop with ``grace`` seconds between TERM and KILL; the call's deadline allows for them."""
        request = pb.StopContainerRequest(container_id=container_id, timeout=grace)
        self.runtime.StopContainer(request, timeout=self.timeout + max(grace, 0))

    def remove_container(self, container_id: str) -> None:
        self.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=self.timeout)

    def container_status(self, container_id: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        request = pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self.runtime.ContainerStatus(request, timeout=self.timeout)

    def list_containers(self, filter_: pb.ContainerFilter | None = None) -> list[pb.Container]:
        request = pb.ListContainersRequest(filter=filter_)
        return list(self.runtime.ListContainers(request, timeout=self.timeout).containers)

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
    import json  # noqa: PLC0415 - only pull and import speak JSON

    return json.dumps(message).encode()


def _decode(data: bytes) -> dict[str, Any]:
    import json  # noqa: PLC0415

    message: dict[str, Any] = json.loads(data)
    return message
