"""Pod sandboxes on a real daemon: pinned namespaces, pod files, status, list, stop, remove, crash recovery."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures.errors import rpc_error
from tests.fixtures.pods import pod_config
from tests.integration.daemon import DaemonProcess

pytestmark = pytest.mark.integration


def run_pod(node: DaemonProcess, config: pb.PodSandboxConfig, handler: str = "") -> str:
    with node.client() as client:
        request = pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
        return client.runtime.RunPodSandbox(request, timeout=10).pod_sandbox_id


def status(node: DaemonProcess, sandbox_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    with node.client() as client:
        return client.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose), timeout=10
        )


def listed(node: DaemonProcess, **filter_: object) -> list[str]:
    with node.client() as client:
        request = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**filter_) if filter_ else None)  # type: ignore[arg-type]
        return [p.id for p in client.runtime.ListPodSandbox(request, timeout=10).items]


def nsenter(kind: str, path: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--{kind}={path}", *argv], capture_output=True, text=True, check=True).stdout


def test_a_pod_gets_pinned_namespaces_and_its_files(node: DaemonProcess) -> None:
    sysctls = {"net.ipv4.ip_unprivileged_port_start": "53", "kernel.shm_rmid_forced": "1"}
    host_value = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    sandbox_id = run_pod(node, pod_config(sysctls=sysctls))
    st = status(node, sandbox_id, verbose=True)
    assert st.status.state == pb.PodSandboxState.SANDBOX_READY
    assert st.status.metadata.name == "web"
    assert dict(st.status.labels) == {"app": "web", "tier": "front"}
    assert st.status.linux.namespaces.options.pid == pb.NamespaceMode.CONTAINER
    pod_dir = node.state / "pods" / sandbox_id
    net, uts, ipc = (str(pod_dir / "ns" / k) for k in ("net", "uts", "ipc"))
    assert {net, uts, ipc, str(pod_dir / "shm")} <= set(node.mounts())
    assert nsenter("uts", uts, "hostname").strip() == "web-host"
    assert [line.split(":")[1].strip() for line in nsenter("net", net, "ip", "-o", "link").splitlines()] == ["lo"]
    assert nsenter("net", net, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "53"
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text() == host_value
    assert nsenter("ipc", ipc, "cat", "/proc/sys/kernel/shm_rmid_forced").strip() == "1"
    assert os.stat(net).st_ino != os.stat("/proc/self/ns/net").st_ino
    assert (pod_dir / "resolv.conf").read_text() == (
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n"
    )
    assert (pod_dir / "hostname").read_text() == "web-host\n"
    assert "127.0.0.1\tlocalhost" in (pod_dir / "hosts").read_text()
    assert '"pid_mode": "CONTAINER"' in st.info["info"]


def test_list_and_stream_pods_with_filters(node: DaemonProcess) -> None:
    first = run_pod(node, pod_config("a"))
    second = run_pod(node, pod_config("b"))
    assert set(listed(node)) == {first, second}
    assert listed(node, id=first[:10]) == [first]
    assert listed(node, label_selector={"app": "b"}) == [second]
    assert listed(node, label_selector={"app": "b", "tier": "back"}) == []
    with node.client() as client:
        client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=first), timeout=10)
        streamed = [
            p.id
            for batch in client.runtime.StreamPodSandboxes(pb.StreamPodSandboxesRequest(), timeout=10)
            for p in batch.pod_sandboxes
        ]
    ready = pb.PodSandboxStateValue(state=pb.PodSandboxState.SANDBOX_READY)
    assert listed(node, state=ready) == [second]
    assert sorted(streamed) == sorted([first, second])


def test_stop_and_remove_release_everything_and_are_idempotent(node: DaemonProcess) -> None:
    sandbox_id = run_pod(node, pod_config())
    pod_dir = node.state / "pods" / sandbox_id
    with node.client() as client:
        for _ in range(2):
            client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=10)
        assert status(node, sandbox_id).status.state == pb.PodSandboxState.SANDBOX_NOTREADY
        assert str(pod_dir / "shm") not in node.mounts()
        for _ in range(2):
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=10)
    assert node.mounts() == []
    assert not pod_dir.exists()
    assert listed(node) == []
    err = rpc_error(lambda: status(node, sandbox_id))
    assert err.code == grpc.StatusCode.NOT_FOUND


def test_a_running_pod_is_removed_without_a_stop(node: DaemonProcess) -> None:
    sandbox_id = run_pod(node, pod_config())
    with node.client() as client:
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=10)
    assert node.mounts() == []


def test_host_network_and_ipc_pods_use_the_nodes_namespaces(node: DaemonProcess) -> None:
    sandbox_id = run_pod(node, pod_config(host_network=True, host_ipc=True))
    pod_dir = node.state / "pods" / sandbox_id
    assert node.mounts() == []  # nothing pinned, no tmpfs: the node's net, uts, ipc and /dev/shm
    assert (pod_dir / "hostname").read_text() == "web-host\n"


def test_a_pod_without_a_hostname_gets_the_nodes(node: DaemonProcess) -> None:
    """critest's pod names are longer than a hostname may be: without config.hostname the pod gets the node's
    hostname (as containerd and CRI-O give it), while a given hostname is still checked."""
    config = pod_config("p" * 80)
    config.hostname = ""
    sandbox_id = run_pod(node, config)
    pod_dir = node.state / "pods" / sandbox_id
    assert nsenter("uts", str(pod_dir / "ns" / "uts"), "hostname").strip() == os.uname().nodename
    assert (pod_dir / "hostname").read_text() == os.uname().nodename + "\n"
    config = pod_config("long")
    config.hostname = "h" * 65
    err = rpc_error(lambda: run_pod(node, config))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "hostname" in err.details


def test_the_same_pod_attempt_twice_is_refused(node: DaemonProcess) -> None:
    first = run_pod(node, pod_config())
    err = rpc_error(lambda: run_pod(node, pod_config()))
    assert err.code == grpc.StatusCode.ALREADY_EXISTS
    assert first in err.details


def test_bad_pods_are_refused_and_leave_nothing(node: DaemonProcess) -> None:
    group_only = pod_config()
    group_only.linux.security_context.run_as_group.value = 5  # api.proto: an error without run_as_user
    cases = [
        (lambda: run_pod(node, pod_config(), handler="kata"), grpc.StatusCode.INVALID_ARGUMENT, "'kata'"),
        (lambda: run_pod(node, pod_config(sysctls={"net.no.such.key": "1"})), grpc.StatusCode.INVALID_ARGUMENT,
         "net.no.such.key"),
        (lambda: run_pod(node, pod_config(sysctls={"kernel.pid_max": "9"})), grpc.StatusCode.INVALID_ARGUMENT,
         "kernel.pid_max"),
        (lambda: run_pod(node, group_only), grpc.StatusCode.INVALID_ARGUMENT,
         "config.linux.security_context.run_as_group is set without run_as_user"),
    ]  # fmt: skip
    for fn, code, text in cases:
        err = rpc_error(fn)
        assert err.code == code, err.details
        assert text in err.details
    assert listed(node) == []
    assert node.mounts() == []
    assert list((node.state / "pods").iterdir()) == []


@pytest.mark.parametrize(
    ("host", "sysctl", "message"),
    [
        ({"host_network": True}, "net.ipv4.ip_forward",
         "sysctl net.ipv4.ip_forward: lives in the net namespace, which this pod shares with the node (hostNetwork)"),
        ({"host_ipc": True}, "kernel.shm_rmid_forced",
         "sysctl kernel.shm_rmid_forced: lives in the ipc namespace, which this pod shares with the node (hostIPC)"),
        ({"host_network": True, "host_ipc": True}, "fs.mqueue.msg_max",
         "sysctl fs.mqueue.msg_max: lives in the ipc namespace, which this pod shares with the node (hostIPC)"),
        ({"host_network": True, "host_ipc": True}, "kernel.panic", "sysctl kernel.panic: not namespaced"),
    ],
)  # fmt: skip
def test_sysctls_of_namespaces_shared_with_the_node_are_refused(
    node: DaemonProcess, host: dict[str, bool], sysctl: str, message: str
) -> None:
    """A pod on the node's network or IPC namespace cannot set their sysctls: that would change the node."""
    before = Path("/proc/sys", *sysctl.split(".")).read_text()
    err = rpc_error(lambda: run_pod(node, pod_config(sysctls={sysctl: "1"}, **host)))  # type: ignore[arg-type]
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err.details
    assert message in err.details
    assert Path("/proc/sys", *sysctl.split(".")).read_text() == before
    assert listed(node) == []
    assert not (node.state / "pods").exists() or list((node.state / "pods").iterdir()) == []


def test_pods_survive_a_daemon_crash_and_half_made_ones_are_undone(node: DaemonProcess) -> None:
    ready = run_pod(node, pod_config("kept"))
    half = run_pod(node, pod_config("half"))
    node.stop(signal.SIGKILL)
    db = sqlite3.connect(node.root / "metadata.db")  # as if the crash came before the pod was READY
    with db:
        db.execute("UPDATE sandboxes SET state = 'CREATING' WHERE id = ?", (half,))
    db.close()
    node.start()
    assert listed(node) == [ready]
    assert status(node, ready).status.state == pb.PodSandboxState.SANDBOX_READY
    assert not (node.state / "pods" / half).exists()
    assert not any(half in m for m in node.mounts())
    assert str(node.state / "pods" / ready / "ns" / "net") in node.mounts()
