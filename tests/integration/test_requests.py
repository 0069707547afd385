"""Requests as the kubelet (or a broken client) sends them: every RPC answers, bad ones precisely."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from moorage.cri import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from tests.integration.daemon import DaemonProcess

pytestmark = pytest.mark.integration

SERVED = {"Version", "Status", "RuntimeConfig", "UpdateRuntimeConfig"} | {m.name for m in IMAGE_SERVICE.methods}
SERVED |= {"RunPodSandbox", "PodSandboxStatus", "StopPodSandbox", "RemovePodSandbox", "ListPodSandbox"}
SERVED |= {"StreamPodSandboxes", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer"}
SERVED |= {"ContainerStatus", "ListContainers", "StreamContainers", "ExecSync", "UpdateContainerResources"}
SERVED |= {"ReopenContainerLog", "ContainerStats", "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats"}
SERVED |= {"GetContainerEvents", "StreamContainerStats", "StreamPodSandboxStats", "ListMetricDescriptors"}
SERVED |= {"ListPodSandboxMetrics", "StreamPodSandboxMetrics", "Exec", "PortForward", "Attach"}
SERVED |= {"UpdatePodSandboxResources"}
SERVED |= {"CheckpointContainer"}
VALIDATED_ONLY: set[str] = set()


def call(channel: grpc.Channel, service: Any, method_name: str, request: Any = None) -> Any:
    method = service.methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{service.full_name}/{method_name}"
    serialize, deserialize = request_class.SerializeToString, response_class.FromString
    request = request if request is not None else request_class()
    if method.server_streaming:
        return list(channel.unary_stream(path, serialize, deserialize)(request, timeout=10))
    return channel.unary_unary(path, serialize, deserialize)(request, timeout=10)


@pytest.fixture
def channel(daemon: DaemonProcess) -> Any:
    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        yield ch


def all_rpcs() -> list[tuple[Any, str]]:
    return [(s, m.name) for s in (RUNTIME_SERVICE, IMAGE_SERVICE) for m in s.methods]


def test_every_rpc_not_built_yet_is_unimplemented_with_a_message(channel: grpc.Channel, daemon: DaemonProcess) -> None:
    refused = []
    for service, name in all_rpcs():
        if name in SERVED or name in VALIDATED_ONLY:
            continue
        with pytest.raises(grpc.RpcError) as err:
            call(channel, service, name)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
        assert err.value.details() == f"{service.name}.{name} is not implemented by moorage yet"
        refused.append(name)
    assert "CheckpointPod" in refused
    with daemon.client() as client:  # and the daemon still serves
        assert client.version().runtime_name == "moorage"


def test_all_cri_v1_rpcs_are_known() -> None:
    rpcs = {name for _, name in all_rpcs()}
    for newer in ("StreamPodSandboxes", "StreamContainers", "StreamImages", "GetContainerEvents",
                  "ListMetricDescriptors", "ListPodSandboxMetrics", "RuntimeConfig", "CheckpointContainer",
                  "UpdatePodSandboxResources", "ImageFsInfo"):  # fmt: skip
        assert newer in rpcs


def meta(name: str = "web", namespace: str = "default", uid: str = "u-1") -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid)


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (pb.RunPodSandboxRequest(), "INVALID_ARGUMENT", "RunPodSandboxRequest.config is required"),
        (pb.RunPodSandboxRequest(config=pb.PodSandboxConfig()), "INVALID_ARGUMENT", "config.metadata is required"),
        (
            pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=meta(name="we\0b"))),
            "INVALID_ARGUMENT",
            "config.metadata.name 'we\\x00b' contains a NUL byte",
        ),
        (
            pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=meta(namespace="../etc"))),
            "INVALID_ARGUMENT",
            "config.metadata.namespace '../etc' contains a path separator",
        ),
        (
            pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=meta(uid=""))),
            "INVALID_ARGUMENT",
            "config.metadata.uid is required",
        ),
        (
            pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=meta(), log_directory="logs/web")),
            "INVALID_ARGUMENT",
            "config.log_directory 'logs/web' must be an absolute path",
        ),
        (pb.PodSandboxStatusRequest(), "INVALID_ARGUMENT", "pod_sandbox_id is required"),
        (pb.PodSandboxStatusRequest(pod_sandbox_id="deadbeef"), "NOT_FOUND", "pod sandbox 'deadbeef' not found"),
        (pb.ContainerStatusRequest(container_id="c0ffee"), "NOT_FOUND", "container 'c0ffee' not found"),
        (pb.ContainerStatusRequest(container_id="a/b"), "INVALID_ARGUMENT", "container_id 'a/b' is not a valid id"),
        (pb.CreateContainerRequest(), "INVALID_ARGUMENT", "pod_sandbox_id is required"),
        (
            pb.CreateContainerRequest(pod_sandbox_id="p1"),
            "INVALID_ARGUMENT",
            "CreateContainerRequest.config is required",
        ),
        (
            pb.CreateContainerRequest(
                pod_sandbox_id="p1",
                config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name="app"), image=pb.ImageSpec(image="x")),
            ),
            "NOT_FOUND",
            "pod sandbox 'p1' not found",
        ),
        (pb.StopPodSandboxRequest(), "INVALID_ARGUMENT", "pod_sandbox_id is required"),
        (pb.RemoveContainerRequest(), "INVALID_ARGUMENT", "container_id is required"),
    ],
)
def test_bad_requests_get_the_right_code_and_message(
    channel: grpc.Channel, daemon: DaemonProcess, request_: Any, code: str, message: str
) -> None:
    name = type(request_).__name__.removesuffix("Request")
    with pytest.raises(grpc.RpcError) as err:
        call(channel, RUNTIME_SERVICE, name, request_)
    assert err.value.code().name == code
    assert message in str(err.value.details())
    with daemon.client() as client:
        assert client.version().runtime_name == "moorage"


@pytest.mark.parametrize(
    "request_",
    [
        pb.StopPodSandboxRequest(pod_sandbox_id="gone"),
        pb.RemovePodSandboxRequest(pod_sandbox_id="gone"),
        pb.StopContainerRequest(container_id="gone", timeout=1),
        pb.RemoveContainerRequest(container_id="gone"),
    ],
)
def test_stop_and_remove_of_what_does_not_exist_succeed(channel: grpc.Channel, request_: Any) -> None:
    # api.proto: these are idempotent, the kubelet retries them after crashes.
    call(channel, RUNTIME_SERVICE, type(request_).__name__.removesuffix("Request"), request_)
