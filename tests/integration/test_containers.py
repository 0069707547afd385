"""Containers on a real daemon: runc under conmon, CRI log files, exit codes, stop, remove, restarts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from moorage.cri import pb, pb_grpc
from moorage.runtime.exec.exec_sync import KUBELET_MAX_RECEIVE, OUTPUT_CAP
from tests.fixtures import cgroups
from tests.fixtures.errors import rpc_error
from tests.fixtures.pods import Pod, log_lines, pod_config
from tests.fixtures.pods import pod as pod  # noqa: PLC0414 (the fixture)
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration

CGROUP_ROOT = Path("/sys/fs/cgroup")


def test_a_container_runs_logs_and_exits_with_its_code(pod: Pod, busybox: PushedImage) -> None:
    container_id = pod.run("job", "sh", "-c", "echo hello; echo oops >&2; hostname; id -u; exit 3")
    st = pod.wait_exit(container_id)
    assert (st.exit_code, st.reason) == (3, "Error")
    assert st.image_ref == st.image_id == busybox.image.config_digest
    assert st.started_at > st.created_at > 0
    assert st.finished_at >= st.started_at
    lines = log_lines(st.log_path)
    assert ("stdout", "F", "hello") in lines
    assert ("stderr", "F", "oops") in lines
    assert ("stdout", "F", "web-host") in lines  # the pod's hostname, from its UTS namespace
    assert ("stdout", "F", "1000") in lines  # the image's USER


def test_a_completed_container(pod: Pod) -> None:
    st = pod.wait_exit(pod.run("ok", "true"))
    assert (st.exit_code, st.reason) == (0, "Completed")


def test_stop_sends_term_then_kill(pod: Pod) -> None:
    stubborn = pod.run("stubborn", "sh", "-c", "trap '' TERM; while true; do sleep 1; done")
    polite = pod.run("polite", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
    assert pod.status(stubborn).state == pb.ContainerState.CONTAINER_RUNNING
    with pod.node.client() as client:
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=polite, timeout=10), timeout=30)
        began = time.monotonic()
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1), timeout=30)
        assert time.monotonic() - began >= 1
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1), timeout=30)
    assert pod.status(polite).exit_code == 0
    assert pod.status(stubborn).exit_code == 137


def test_list_filters_and_remove(pod: Pod) -> None:
    first = pod.run("first", "sleep", "1000")
    second = pod.create("second", "sleep", "1000")
    with pod.node.client() as client:

        def ids(**filter_: object) -> list[str]:
            request = pb.ListContainersRequest(filter=pb.ContainerFilter(**filter_))  # type: ignore[arg-type]
            return [c.id for c in client.runtime.ListContainers(request).containers]

        assert sorted(ids()) == sorted([first, second])
        assert ids(pod_sandbox_id=pod.id, label_selector={"name": "second"}) == [second]
        running = pb.ContainerStateValue(state=pb.ContainerState.CONTAINER_RUNNING)
        assert ids(state=running) == [first]
        assert ids(id=second[:12]) == [second]
        rootfs = pod.node.state / "bundles" / first / "rootfs"
        assert str(rootfs) in pod.node.mounts()
        client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=first), timeout=30)
        assert str(rootfs) not in pod.node.mounts()
        assert not (pod.node.root / "containers" / first).exists()
        assert ids() == [second]
        err = rpc_error(lambda: client.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=first)))
        assert err.code == grpc.StatusCode.NOT_FOUND


def test_removing_the_pod_removes_its_containers(node: DaemonProcess, busybox: PushedImage, cgroup_parent: str,
                                                 tmp_path: Path) -> None:  # fmt: skip
    p = Pod(node, busybox.name, cgroup_parent, tmp_path)
    container_id = p.run("app", "sleep", "1000")
    pid = p.status(container_id)
    with node.client() as client:
        client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=30)
        assert p.status(container_id).state == pb.ContainerState.CONTAINER_EXITED
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=30)
        assert list(client.runtime.ListContainers(pb.ListContainersRequest()).containers) == []
    assert node.mounts() == []
    assert pid is not None


def test_bad_containers_are_refused_and_leave_nothing(pod: Pod) -> None:
    cases = [
        (lambda: pod.create("noimage", "true", image="127.0.0.1:1/none:1"),
         grpc.StatusCode.NOT_FOUND, "pull it first"),
        (lambda: pod.create("nocmd", "/bin/does-not-exist"), grpc.StatusCode.INTERNAL, "does-not-exist"),
        (lambda: pod.create("nomount", "true", mounts=[pb.Mount(container_path="/data", host_path="/nonexistent/x")]),
         grpc.StatusCode.INVALID_ARGUMENT, "mounts[0].host_path: /nonexistent/x does not exist"),
        (lambda: pod.create("nouser", "true", linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(run_as_username="ghost"))),
         grpc.StatusCode.INVALID_ARGUMENT, "user 'ghost'"),
        (lambda: pod.create("grouponly", "true", linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=5)))),
         grpc.StatusCode.INVALID_ARGUMENT,
         "config.linux.security_context.run_as_group is set without run_as_user or run_as_username"),
        (lambda: pod.create("nopod", "true", pod_id="f" * 64), grpc.StatusCode.NOT_FOUND, "pod_sandbox_id"),
        (lambda: pod.create("escape", "true", log_path="../../escape.log"),
         grpc.StatusCode.INVALID_ARGUMENT, "config.log_path '../../escape.log' leads outside"),
        (lambda: pod.create("absolute", "true", log_path="/tmp/abs.log"),
         grpc.StatusCode.INVALID_ARGUMENT, "config.log_path '/tmp/abs.log' must be relative"),
    ]  # fmt: skip
    for fn, code, text in cases:
        err = rpc_error(fn)
        assert err.code == code, err.details
        assert text in err.details
    pod.create("dup", "true")
    err = rpc_error(lambda: pod.create("dup", "true"))
    assert err.code == grpc.StatusCode.ALREADY_EXISTS
    with pod.node.client() as client:
        names = [c.metadata.name for c in client.runtime.ListContainers(pb.ListContainersRequest()).containers]
    assert names == ["dup"]
    assert len(list((pod.node.state / "bundles").iterdir())) == 1
    assert len(list((pod.node.root / "containers").iterdir())) == 1
    assert len([m for m in pod.node.mounts() if "/bundles/" in m]) == 1  # only dup's rootfs


def test_the_pods_own_config_rules_not_the_requests_sandbox_config(pod: Pod, tmp_path: Path) -> None:
    """A privileged container needs a privileged pod (containerd, CRI-O), and CreateContainerRequest.sandbox_config
    cannot make the pod privileged or move its logs: the pod's config as it was run is used."""
    claimed = pb.PodSandboxConfig()
    claimed.CopyFrom(pod.config)
    claimed.linux.security_context.privileged = True
    claimed.log_directory = str(tmp_path / "elsewhere")
    privileged = pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(privileged=True))

    def create(name: str, sandbox_config: pb.PodSandboxConfig, **extra: Any) -> str:
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=pod.image), command=["echo", name],
            log_path=f"{name}.log", **extra,
        )  # fmt: skip
        request = pb.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=sandbox_config)
        with pod.node.client() as client:
            return client.runtime.CreateContainer(request, timeout=30).container_id

    for sandbox_config in (pod.config, claimed):
        err = rpc_error(lambda: create("admin", sandbox_config, linux=privileged))  # noqa: B023 - called at once
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err.details
        assert (
            f"config.linux.security_context.privileged: no privileged container allowed in sandbox {pod.id}"
            in err.details
        )
    with pod.node.client() as client:
        assert list(client.runtime.ListContainers(pb.ListContainersRequest()).containers) == []
    assert not (pod.node.state / "bundles").exists() or not list((pod.node.state / "bundles").iterdir())
    container_id = create("logger", claimed)
    with pod.node.client() as client:
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    st = pod.wait_exit(container_id)
    assert st.log_path == str(Path(pod.config.log_directory) / "logger.log")
    assert ("stdout", "F", "logger") in log_lines(st.log_path)
    assert not (tmp_path / "elsewhere").exists()


def test_containers_keep_running_through_a_daemon_crash(pod: Pod) -> None:
    running = pod.run("survivor", "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done")
    finisher = pod.run("finisher", "sh", "-c", "sleep 1.5; exit 7")
    before = pod.status(running)
    pod.node.stop(signal.SIGKILL)
    time.sleep(2)  # the finisher exits while moorage is down
    pod.node.start()
    after = pod.status(running)
    assert after.state == pb.ContainerState.CONTAINER_RUNNING
    assert after.started_at == before.started_at
    st = pod.wait_exit(finisher)
    assert st.exit_code == 7
    ticks = len(log_lines(after.log_path))
    time.sleep(0.6)
    assert len(log_lines(after.log_path)) > ticks  # conmon kept logging throughout
    assert os.path.exists(after.log_path)


def test_exec_sync_returns_code_and_output_and_honours_the_timeout(pod: Pod) -> None:
    container_id = pod.run("server", "sleep", "1000")
    with pod.node.client() as client:

        def exec_sync(*cmd: str, timeout: int = 10) -> pb.ExecSyncResponse:
            request = pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
            return client.runtime.ExecSync(request, timeout=60)

        result = exec_sync("sh", "-c", "echo out; echo err >&2; id -u; exit 4")
        assert (result.exit_code, result.stdout, result.stderr) == (4, b"out\n1000\n", b"err\n")
        big = exec_sync("sh", "-c", "head -c 20000000 /dev/zero")
        assert (big.exit_code, len(big.stdout)) == (0, OUTPUT_CAP)  # capped, not failed
        began = time.monotonic()
        err = rpc_error(lambda: exec_sync("sleep", "60", timeout=1))
        assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - began < 15
        stats = exec_sync("sh", "-c", "cat /proc/[0-9]*/stat").stdout.decode().splitlines()
        sleeps = [line for line in stats if "(sleep)" in line]
        # the timed-out sleep is gone, not even a zombie: the runtime's client reaped it (this container's init,
        # `sleep 1000` itself, never would), so critest's `pgrep sleep` finds nothing of it
        assert len(sleeps) == 1, sleeps
        missing = rpc_error(lambda: exec_sync("/no/such/probe"))
        assert missing.code == grpc.StatusCode.NOT_FOUND  # the request's doing, not the node's
        assert missing.details.startswith("cmd[0] '/no/such/probe' not found in the container")
        assert missing.details.endswith('exec: "/no/such/probe": stat /no/such/probe: no such file or directory')


def test_exec_sync_output_fits_the_kubelets_receive_limit(pod: Pod) -> None:
    """stdout and stderr are capped together, so a kubelet (16 MiB receive limit) gets the answer, not an error."""
    container_id = pod.run("chatty", "sleep", "1000")
    script = "head -c 20000000 /dev/zero; head -c 20000000 /dev/zero >&2; exit 3"
    request = pb.ExecSyncRequest(container_id=container_id, cmd=["sh", "-c", script], timeout=60)
    options = [("grpc.max_receive_message_length", KUBELET_MAX_RECEIVE)]
    with grpc.insecure_channel(pod.node.endpoint, options=options) as channel:
        result = pb_grpc.RuntimeServiceStub(channel).ExecSync(request, timeout=120)
    assert result.exit_code == 3
    assert len(result.stdout) + len(result.stderr) == OUTPUT_CAP
    assert result.ByteSize() <= KUBELET_MAX_RECEIVE
    assert set(result.stdout) | set(result.stderr) == {0}
    assert "exec output cut to fit the kubelet's message limit" in pod.node.log()


def host_processes(cmdline: str, cgroup: str) -> list[int]:
    """Host pids of the processes whose command line is ``cmdline`` in a cgroup under ``cgroup`` (the test's own
    cgroup parent: other tests may run the same command meanwhile)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip() == cmdline.encode() and (
                    f":{cgroup}/" in (proc / "cgroup").read_text()
                ):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    "command",
    [
        ["sleep", "4321"],  # critest's "runtime should support execSync with timeout"
        ["sh", "-c", "sleep 4321; true"],  # a shell waiting on its child
        ["sh", "-c", "sleep 4321 & sleep 4321 & setsid sleep 4321 & wait"],  # children, one in a session of its own
        ["sh", "-c", "(sleep 4321 &) ; sleep 4321"],  # an orphan reparented to the container's init
    ],
)
@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_an_exec_sync_timeout_leaves_no_process_behind(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path, *, handler: str, command: list[str]
) -> None:
    pod = Pod(node, busybox.name, cgroup_parent, tmp_path, handler=handler)
    try:
        _exec_sync_times_out_and_leaves_nothing(pod, command)
    finally:
        with node.client() as client:
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


def _exec_sync_times_out_and_leaves_nothing(pod: Pod, command: list[str]) -> None:
    container_id = pod.run("server", "sleep", "1000")
    with pod.node.client() as client:
        request = pb.ExecSyncRequest(container_id=container_id, cmd=command, timeout=1)
        err = rpc_error(lambda: client.runtime.ExecSync(request, timeout=60))
        assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "timed out after 1 s" in err.details
        listing = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <$f; echo; done | grep 'slee[p] 4321' || true"
        check = pb.ExecSyncRequest(container_id=container_id, cmd=["sh", "-c", listing])  # no pgrep in busybox here
        result = client.runtime.ExecSync(check, timeout=60)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"", b"")
    assert host_processes("sleep 4321", pod.config.linux.cgroup_parent) == []


def test_update_container_resources_changes_the_cgroup(pod: Pod, cgroup_parent: str) -> None:
    container_id = pod.run("limited", "sleep", "1000")
    with pod.node.client() as client:
        request = pb.UpdateContainerResourcesRequest(
            container_id=container_id,
            linux=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=512),
        )
        client.runtime.UpdateContainerResources(request, timeout=30)
    cgroup = cgroups.container_cgroup(cgroup_parent, container_id)
    if cgroups.is_v2():
        assert int(cgroups.read(cgroups.directory("memory", cgroup) / "memory.max")) == 64 << 20
        assert int(cgroups.read(cgroups.directory("cpu", cgroup) / "cpu.weight")) in cgroups.runc_cpu_weights(512)
    else:
        assert int(cgroups.read(cgroups.directory("memory", cgroup) / "memory.limit_in_bytes")) == 64 << 20
        assert int(cgroups.read(cgroups.directory("cpu", cgroup) / "cpu.shares")) == 512


def test_an_oom_kill_is_reported_as_oomkilled(pod: Pod) -> None:
    limits = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(memory_limit_in_bytes=32 << 20))
    container_id = pod.create("hog", "sh", "-c", 'a=aaaaaaaa; while true; do a="$a$a"; done', linux=limits)
    with pod.node.client() as client:
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    st = pod.wait_exit(container_id, 30)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")


def test_reopen_container_log_after_rotation(pod: Pod) -> None:
    container_id = pod.run("chatty", "sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done")
    log_path = Path(pod.status(container_id).log_path)
    time.sleep(0.5)
    rotated = log_path.with_name(log_path.name + ".1")
    log_path.rename(rotated)  # what the kubelet's log rotation does
    with pod.node.client() as client:
        client.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=container_id), timeout=30)
    time.sleep(0.5)
    assert log_lines(str(rotated))
    fresh = log_lines(str(log_path))
    assert fresh
    assert all(text.startswith("line ") for _, _, text in fresh)


def test_a_pod_sharing_one_pid_namespace_runs_moorages_own_pause(
    unstarted: DaemonProcess, registry: Registry, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    node = unstarted
    node.trust_registry(registry.host)
    node.loopback_network()
    node.write_config('sandbox_image = "localhost/moorage/pause:1.0"\n')
    node.start()
    with node.client() as client:  # the local pause image was built at start-up and is pinned
        (pause,) = [i for i in client.list_images() if "localhost/moorage/pause:1.0" in i.repo_tags]
        assert pause.pinned
    shared = Pod.__new__(Pod)
    shared.node, shared.image = node, busybox.name
    shared.config = pod_config("shared", cgroup_parent=cgroup_parent)
    shared.config.linux.security_context.namespace_options.pid = pb.NamespaceMode.POD
    shared.config.log_directory = str(tmp_path / "logs")
    with node.client() as client:
        client.pull_image(busybox.name)
        shared.id = client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=shared.config)).pod_sandbox_id
    try:
        first = shared.run("first", "sleep", "1000")
        second = shared.run("second", "sh", "-c", "sleep 0.5; cat /proc/1/cmdline; echo; ps -o comm; exit 0")
        st = shared.wait_exit(second)
        text = [t for _, _, t in log_lines(st.log_path)]
        assert text[0].rstrip("\0") == "/pause"  # PID 1 of the pod's PID namespace is the pause process
        assert "sleep" in text  # and the other container's processes are visible
        assert shared.status(first).state == pb.ContainerState.CONTAINER_RUNNING
        with node.client() as client:
            assert len(client.runtime.ListContainers(pb.ListContainersRequest()).containers) == 2  # pause not listed
            client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=shared.id), timeout=60)
            assert shared.status(first).state == pb.ContainerState.CONTAINER_EXITED
    finally:
        with node.client() as client:
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=shared.id), timeout=60)
    assert node.mounts() == []
    assert not (node.state / "bundles" / shared.id).exists()
