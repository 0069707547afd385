"""CDI devices on a real daemon and runc: a spec of the test's own exposes /dev/zero under another name, a host
directory and an environment variable; the container sees all three, and an unknown device fails CreateContainer
with nothing left behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures.errors import rpc_error
from tests.fixtures.pods import Pod, log_lines
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage, running_node

pytestmark = pytest.mark.integration

SCRIPT = (
    "head -c 3 /dev/moorage-zero | od -An -tx1; cat /cdi/hello.txt; echo env=$CDI_GREETING; "
    "touch /cdi/new 2>/dev/null || echo read-only"
)


@pytest.fixture
def cdi_node(registry: Registry, tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon whose CDI spec directories are the test's: an empty one (first) and one with the spec."""
    empty, specs, shared = tmp_path / "etc-cdi", tmp_path / "run-cdi", tmp_path / "shared"
    empty.mkdir()
    specs.mkdir()
    shared.mkdir()
    (shared / "hello.txt").write_text("hello from the host\n")
    spec = {
        "cdiVersion": "0.6.0",
        "kind": "moorage.test/zero",
        "containerEdits": {"env": ["CDI_GREETING=from-the-spec"]},
        "devices": [
            {
                "name": "zero0",
                "containerEdits": {
                    "deviceNodes": [{"path": "/dev/moorage-zero", "hostPath": "/dev/zero", "permissions": "rw"}],
                    "mounts": [{"hostPath": str(shared), "containerPath": "/cdi", "options": ["ro", "nosuid"]}],
                },
            }
        ],
    }
    (specs / "zero.json").write_text(json.dumps(spec))
    with running_node(registry.host, f'[runtime]\ncdi_spec_dirs = ["{empty}", "{specs}"]') as d:
        yield d


@pytest.fixture
def cdi_pod(cdi_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path) -> Iterator[Pod]:
    p = Pod(cdi_node, busybox.name, cgroup_parent, tmp_path)
    yield p
    with cdi_node.client() as client:
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)


def output(pod: Pod, container_id: str) -> list[str]:
    status = pod.wait_exit(container_id)
    assert status.exit_code == 0, status
    return [text for _, _, text in log_lines(status.log_path)]


@pytest.mark.parametrize("how", ["field", "annotation"])
def test_a_cdi_device_its_mount_and_env_reach_the_container(cdi_pod: Pod, how: str) -> None:
    asked: dict[str, object] = (
        {"CDI_devices": [pb.CDIDevice(name="moorage.test/zero=zero0")]}
        if how == "field"
        else {"annotations": {"cdi.k8s.io/moorage-test": "moorage.test/zero=zero0"}}
    )
    container_id = cdi_pod.run("dev", "sh", "-c", SCRIPT, **asked)
    assert output(cdi_pod, container_id) == [" 00 00 00", "hello from the host", "env=from-the-spec", "read-only"]


def test_without_the_device_the_container_sees_none_of_it(cdi_pod: Pod) -> None:
    container_id = cdi_pod.run("plain", "sh", "-c", "ls /dev/moorage-zero /cdi 2>&1; echo env=$CDI_GREETING")
    status = cdi_pod.wait_exit(container_id)
    lines = [text for _, _, text in log_lines(status.log_path)]
    assert lines[-1] == "env="
    assert len(lines) == 3
    assert all("No such file" in line for line in lines[:-1])


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("moorage.test/zero=zero9", grpc.StatusCode.FAILED_PRECONDITION, "moorage.test/zero=zero9 is defined by no"),
        ("zero9", grpc.StatusCode.INVALID_ARGUMENT, "'zero9' is not a fully qualified CDI device name"),
    ],
)
def test_an_unknown_or_malformed_device_fails_create_and_leaves_nothing(
    cdi_pod: Pod, name: str, code: grpc.StatusCode, words: str
) -> None:
    err = rpc_error(lambda: cdi_pod.create("bad", "true", CDI_devices=[pb.CDIDevice(name=name)]))
    assert err.code == code
    assert words in err.details
    with cdi_pod.node.client() as client:
        assert not client.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert cdi_pod.run("bad", "true")  # the name was not left reserved
