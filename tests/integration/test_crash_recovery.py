"""The daemon SIGKILLed in the middle of a transition, between the OCI runtime's step and the record's update.

The pods here run on a handler whose runtime is runc wrapped by a script: while ``hold-<subcommand>`` exists in
the test's directory, the wrapper runs the real runc, then waits before it returns, so the daemon is killed at
exactly that point; the test then removes the file (the wrapper exits) and restarts the daemon.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures.errors import rpc_error
from tests.fixtures.held_runtime import Held
from tests.fixtures.held_runtime import held as held  # noqa: PLC0414 (the fixture)
from tests.fixtures.held_runtime import held_node as held_node  # noqa: PLC0414 (the fixture)
from tests.fixtures.pods import Pod, pod_config
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration


def test_a_start_cut_by_a_crash_is_running_after_the_restart(
    held_node: DaemonProcess, held: Held, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    pod = Pod(held_node, busybox.name, cgroup_parent, tmp_path, "held")
    container_id = pod.create("cut", "sh", "-c", "echo up; exec sleep 1000")
    before = time.time_ns()
    request = pb.StartContainerRequest(container_id=container_id)
    held.crash_during(held_node, "start", lambda c: c.runtime.StartContainer(request))
    st = pod.status(container_id)
    assert st.state == pb.ContainerState.CONTAINER_RUNNING  # not CREATED while its process runs
    assert before <= st.started_at <= time.time_ns()  # the time StartContainer ran the runtime at
    assert "a start the crash cut short" in held_node.log()
    with held_node.client() as client:  # the kubelet's retry: the container's state, not the runtime's refusal
        err = rpc_error(lambda: client.runtime.StartContainer(request))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION, err.details
        assert f"container {container_id} is RUNNING, not CREATED" in err.details
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0))
    st = pod.wait_exit(container_id)
    assert (st.exit_code, st.reason) == (137, "Error")
    assert st.finished_at >= st.started_at


def test_a_stop_cut_by_a_crash_is_exited_after_the_restart(
    held_node: DaemonProcess, held: Held, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    pod = Pod(held_node, busybox.name, cgroup_parent, tmp_path, "held")
    container_id = pod.run("stopped", "sleep", "1000")
    request = pb.StopContainerRequest(container_id=container_id, timeout=0)
    held.crash_during(held_node, "kill", lambda c: c.runtime.StopContainer(request))
    st = pod.status(container_id)
    assert (st.state, st.exit_code) == (pb.ContainerState.CONTAINER_EXITED, 137)


def test_a_pod_run_cut_after_its_pause_started_is_undone(
    held_node: DaemonProcess, held: Held, cgroup_parent: str
) -> None:
    config = pod_config("shared", cgroup_parent=cgroup_parent)
    config.linux.security_context.namespace_options.pid = pb.NamespaceMode.POD
    request = pb.RunPodSandboxRequest(config=config, runtime_handler="held")
    held.crash_during(held_node, "start", lambda c: c.runtime.RunPodSandbox(request))
    with held_node.client() as client:
        assert list(client.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items) == []
    runtime_root = held_node.state / "runtime" / "held"
    assert not runtime_root.exists() or list(runtime_root.iterdir()) == []  # the pause container is gone
    assert not list((held_node.state / "bundles").iterdir())
    assert held_node.mounts() == []


def test_a_pod_stop_cut_after_its_pause_was_killed_is_stopped_after_the_restart(
    held_node: DaemonProcess, held: Held, cgroup_parent: str
) -> None:
    config = pod_config("shared", cgroup_parent=cgroup_parent)
    config.linux.security_context.namespace_options.pid = pb.NamespaceMode.POD
    with held_node.client() as client:
        request = pb.RunPodSandboxRequest(config=config, runtime_handler="held")
        sandbox_id = client.runtime.RunPodSandbox(request, timeout=60).pod_sandbox_id
    stop = pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
    held.crash_during(held_node, "kill", lambda c: c.runtime.StopPodSandbox(stop))
    with held_node.client() as client:
        st = client.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
    assert st.state == pb.PodSandboxState.SANDBOX_NOTREADY  # its PID namespace's holder is gone
    assert not [m for m in held_node.mounts() if m.endswith("/shm")]


def test_state_no_record_owns_is_collected_at_start_up(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    """A failed undo's leftovers (a pod directory with a mount, a container's bundle, writable layer and conmon
    files) are removed at the next start; what a pod or container owns stays."""
    pod = Pod(node, busybox.name, cgroup_parent, tmp_path)
    try:
        kept = pod.run("kept", "sleep", "1000")
        stray = "ab" * 32
        pod_dir = node.state / "pods" / stray
        (pod_dir / "ns").mkdir(parents=True)
        (pod_dir / "hostname").write_text("stray\n")
        (pod_dir / "shm").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stray", str(pod_dir / "shm")], check=True)
        dirs = [node.state / "bundles" / stray, node.root / "containers" / stray, node.state / "containers" / stray]
        for directory in dirs:
            (directory / "rootfs").mkdir(parents=True)
        (node.state / "exits" / stray).write_text("0")
        node.stop()
        node.start()
        assert not pod_dir.exists()
        assert [m for m in node.mounts() if stray in m] == []
        assert [d for d in dirs if d.exists()] == []
        assert not (node.state / "exits" / stray).exists()
        assert (node.state / "pods" / pod.id / "hostname").exists()  # the pod's own stay
        assert (node.state / "bundles" / kept / "config.json").exists()
        assert (node.root / "containers" / kept).is_dir()
        assert pod.status(kept).state == pb.ContainerState.CONTAINER_RUNNING
        assert "removing a pod directory no pod owns" in node.log()
    finally:
        node.remove_all_pods()
