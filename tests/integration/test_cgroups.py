"""Cgroup limits on a real daemon, on cgroup v1 and pure v2 alike (`make test-cgroupv2` runs these in a v2 guest):
what the OCI runtime writes for the CRI resources, UpdateContainerResources, stats read from the cgroup, what the
container sees at /sys/fs/cgroup, an OOM kill, unified keys (v2 only), and the cgroups gone with the pod.

The daemons use the driver the run chose (`tests/fixtures/cgroups.DRIVER`): on cgroupfs a container's cgroup is
``<pod cgroup_parent>/<container id>``; on systemd (``MOORAGE_VM_SYSTEMD=1 make test-cgroupv2``, a real systemd as
PID 1 in the guest) the pod's parent is a slice the test starts through systemd as a kubelet does, and each
container a transient scope ``moorage-<id>.scope`` in it. Also here: RuntimeConfig names the driver, and
`moorage check` reports a driver that does not fit the host's init system or the kubelet's config. Under the v2
guest's emulation every container costs seconds, so the module shares one daemon and each test runs one container.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from moorage.cri import pb
from moorage.node.cgroups import slice_dir, to_slice
from tests.fixtures import cgroups
from tests.fixtures.cgroup_pods import POD_PIDS_MAX, parent_of
from tests.fixtures.cgroup_pods import cg_node as cg_node  # noqa: PLC0414 (the fixture)
from tests.fixtures.cgroup_pods import pod as pod  # noqa: PLC0414 (the fixture)
from tests.fixtures.cgroups import MIB, OWN_MEMORY_LIMIT
from tests.fixtures.cli import moorage
from tests.fixtures.pods import Pod, container_stats, log_lines, wait_for_output
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = [pytest.mark.integration, pytest.mark.cgroup]

ONE_MIB_IN_THE_SHELL = 'x=aaaa; i=0; while [ $i -lt 18 ]; do x="$x$x"; i=$((i+1)); done'
"""Then the shell must stay (sh -c execs its last simple command, which would free the MiB)."""


def start(pod: Pod, name: str, script: str, resources: pb.LinuxContainerResources) -> str:
    container_id = pod.create(name, "sh", "-c", script, linux=pb.LinuxContainerConfig(resources=resources))
    with pod.node.client() as client:
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)
    return container_id


def update(pod: Pod, container_id: str, resources: pb.LinuxContainerResources) -> None:
    with pod.node.client() as client:
        request = pb.UpdateContainerResourcesRequest(container_id=container_id, linux=resources)
        client.runtime.UpdateContainerResources(request, timeout=60)


def limits(cgroup: str) -> dict[str, str]:
    """The limits in a container's cgroup keyed by their v1 file names, on v2 too (but cpu.weight for cpu.shares)."""

    def at(controller: str, file: str) -> str:
        return cgroups.read(cgroups.directory(controller, cgroup) / file)

    if cgroups.is_v2():
        quota, period = at("cpu", "cpu.max").split()
        return {
            "cpu.weight": at("cpu", "cpu.weight"),
            "cpu.cfs_quota_us": quota,
            "cpu.cfs_period_us": period,
            "memory.limit_in_bytes": at("memory", "memory.max"),
            "cpuset.cpus": at("cpuset", "cpuset.cpus"),
            "pids.max": at("pids", "pids.max"),
        }
    return {
        "cpu.shares": at("cpu", "cpu.shares"),
        "cpu.cfs_quota_us": at("cpu", "cpu.cfs_quota_us"),
        "cpu.cfs_period_us": at("cpu", "cpu.cfs_period_us"),
        "memory.limit_in_bytes": at("memory", "memory.limit_in_bytes"),
        "cpuset.cpus": at("cpuset", "cpuset.cpus"),
        "pids.max": at("pids", "pids.max"),
    }


def expected(shares: int, quota: int, period: int, memory: int, *, cpus: str, pids: str) -> dict[str, object]:
    weight = {str(w) for w in cgroups.runc_cpu_weights(shares)}
    return {
        **({"cpu.weight": weight} if cgroups.is_v2() else {"cpu.shares": str(shares)}),
        "cpu.cfs_quota_us": str(quota),
        "cpu.cfs_period_us": str(period),
        "memory.limit_in_bytes": str(memory),
        "cpuset.cpus": cpus,
        "pids.max": pids,
    }


def matches(actual: dict[str, str], wanted: dict[str, object]) -> bool:
    return actual.keys() == wanted.keys() and all(
        actual[k] in v if isinstance(v, set) else actual[k] == v for k, v in wanted.items()
    )


def test_limits_reach_the_cgroup_change_live_and_feed_the_stats(pod: Pod) -> None:
    v2 = cgroups.is_v2()
    all_cpus = "0-1" if (os.cpu_count() or 1) > 1 else "0"
    unified = {"pids.max": "42", "memory.oom.group": "1"} if v2 else {}
    resources = pb.LinuxContainerResources(
        cpu_shares=512,
        cpu_quota=50_000,
        cpu_period=100_000,
        memory_limit_in_bytes=64 * MIB,
        memory_swap_limit_in_bytes=128 * MIB,
        cpuset_cpus="0",
        cpuset_mems="0",
        unified=unified,
    )
    script = f"{ONE_MIB_IN_THE_SHELL}; echo ready; while :; do sleep 1000; done"
    container_id = start(pod, "limited", script, resources)
    wait_for_output(pod, container_id, "ready", seconds=60)
    cgroup = cgroups.container_cgroup(parent_of(pod), container_id)

    # v1 has no per-container pids limit in the CRI: the pod's (the kubelet's podPidsLimit) bounds it from above.
    # The CRI's swap limit is memory + swap: v1's memsw file holds that; v2's memory.swap.max the swap alone.
    memory_dir = cgroups.directory("memory", cgroup)
    if v2:
        assert cgroups.read(memory_dir / "memory.swap.max") == str(64 * MIB)
    elif (memory_dir / "memory.memsw.limit_in_bytes").exists():
        assert cgroups.read(memory_dir / "memory.memsw.limit_in_bytes") == str(128 * MIB)
    first = limits(cgroup)
    assert matches(first, expected(512, 50_000, 100_000, 64 * MIB, cpus="0", pids="42" if v2 else "max")), first
    if v2:
        assert cgroups.read(cgroups.directory("memory", cgroup) / "memory.oom.group") == "1"
        pod_dir = cgroups.pod_dir(parent_of(pod))
        enabled = cgroups.read(cgroups.directory("cpu", pod_dir) / "cgroup.subtree_control").split()
        assert {"cpu", "cpuset", "memory", "pids"} <= set(enabled)
    pod_pids = cgroups.directory("pids", cgroups.pod_dir(parent_of(pod)))
    assert cgroups.read(pod_pids / "pids.max") == str(POD_PIDS_MAX)  # the slice's TasksMax under systemd
    assert int(cgroups.read(pod_pids / "pids.current")) >= 1  # the container's sleep counts against the pod

    update(
        pod,
        container_id,
        pb.LinuxContainerResources(
            cpu_shares=1024,
            cpu_quota=20_000,
            cpu_period=50_000,
            memory_limit_in_bytes=96 * MIB,
            cpuset_cpus=all_cpus,
            cpuset_mems="0",
            unified={"pids.max": "64"} if v2 else {},
        ),
    )
    second = limits(cgroup)
    assert matches(second, expected(1024, 20_000, 50_000, 96 * MIB, cpus=all_cpus, pids="64" if v2 else "max")), second
    assert pod.status(container_id).state == pb.ContainerState.CONTAINER_RUNNING

    stats = container_stats(pod, container_id)
    assert stats.attributes.id == container_id
    assert 0 < stats.cpu.usage_core_nano_seconds.value <= cgroups.cpu_usage_ns(cgroup)
    assert 512 * 1024 < stats.memory.working_set_bytes.value <= stats.memory.usage_bytes.value
    assert 0 < cgroups.memory_usage(cgroup) <= 96 * MIB
    assert stats.memory.available_bytes.value == 96 * MIB - stats.memory.working_set_bytes.value


def test_a_container_sees_its_own_cgroup_at_sys_fs_cgroup(pod: Pod) -> None:
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=64 * MIB)
    st = pod.wait_exit(start(pod, "viewer", f"{OWN_MEMORY_LIMIT}; cat /proc/self/cgroup", resources), 60)
    seen = [text for stream, _, text in log_lines(st.log_path) if stream == "stdout"]
    assert seen[0] == f"limit {64 * MIB}", seen
    if cgroups.is_v2():
        assert seen[1:] == ["0::/"]  # a cgroup namespace rooted at the container's own cgroup


def test_an_oom_kill_is_reported_as_oomkilled(pod: Pod) -> None:
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=16 * MIB)
    container_id = start(pod, "hog", "tail /dev/zero", resources)  # tail keeps its endless last line in memory
    st = pod.wait_exit(container_id, 60)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")
    if cgroups.is_v2():
        events = cgroups.flat_keyed(cgroups.directory("memory", cgroups.pod_dir(parent_of(pod))) / "memory.events")
        assert int(events["oom_kill"]) >= 1  # counted in the pod's cgroup too (hierarchical)


def test_removing_the_pod_removes_its_containers_cgroups(pod: Pod) -> None:
    container_id = start(pod, "short", "exec sleep 1000", pb.LinuxContainerResources(memory_limit_in_bytes=32 * MIB))
    cgroup = cgroups.container_cgroup(parent_of(pod), container_id)
    assert cgroups.directory("memory", cgroup).is_dir()
    with pod.node.client() as client:
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
    assert cgroups.existing(cgroup) == []
    assert cgroups.existing(cgroups.pod_dir(parent_of(pod)))  # the pod's own cgroup is the kubelet's to remove


def test_runtime_config_reports_the_driver(cg_node: DaemonProcess) -> None:
    with cg_node.client() as client:
        answer = client.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=30)
    assert answer.linux.cgroup_driver == pb.CgroupDriver.Value(cgroups.DRIVER.upper())


@pytest.mark.skipif(cgroups.DRIVER != "systemd", reason="the systemd driver's conversion of a cgroupfs parent")
def test_a_cgroupfs_style_parent_becomes_a_slice(cg_node: DaemonProcess, busybox: PushedImage, tmp_path: Path) -> None:
    """A kubelet still on cgroupfs names its pod cgroup by path; the systemd driver puts it in the slice the
    kubelet's own conversion names, and systemd creates that slice for the first scope."""
    parent = f"/moorage-test-{secrets.token_hex(4)}/pod{secrets.token_hex(4)}"
    slice_name = to_slice(parent)
    assert slice_name == parent[1:].replace("-", "_").replace("/", "-") + ".slice"
    p = Pod(cg_node, busybox.name, parent, tmp_path)
    try:
        container_id = p.run("scoped", "sleep", "1000")
        scope = cgroups.CGROUP_ROOT / slice_dir(slice_name).lstrip("/") / f"moorage-{container_id}.scope"
        assert (scope / "cgroup.procs").read_text().split(), f"no process in {scope}"
        shown = subprocess.run(
            ["systemctl", "show", "--property=ActiveState,Slice", f"moorage-{container_id}.scope"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert sorted(shown) == ["ActiveState=active", f"Slice={slice_name}"]
    finally:
        with cg_node.client() as client:
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)
        top = slice_name.split("-")[0] + ".slice"
        subprocess.run(["systemctl", "stop", slice_name, top], check=False, capture_output=True)


def test_moorage_check_reports_a_driver_that_does_not_fit(tmp_path: Path) -> None:
    """On the real host: the driver against the init system (systemd or not), then against a kubelet's config."""
    systemd = Path("/run/systemd/system").is_dir()
    fitting = "systemd" if systemd else "cgroupfs"
    other = "cgroupfs" if systemd else "systemd"
    kubelet = tmp_path / "kubelet.yaml"

    def check(driver: str, kubelet_driver: str) -> dict[str, dict[str, str]]:
        config = tmp_path / f"{driver}.toml"
        config.write_text(f'cgroup_driver = "{driver}"\n')
        kubelet.write_text(f"kind: KubeletConfiguration\ncgroupDriver: {kubelet_driver}\nfailCgroupV1: false\n")
        proc = moorage("check", "--json", "--config", str(config), "--kubelet-config", str(kubelet))
        return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}

    fits = check(fitting, fitting)
    assert fits["cgroup driver"]["status"] == "OK", fits["cgroup driver"]
    assert (fits["cgroup driver vs kubelet"]["status"], fits["cgroup driver vs kubelet"]["detail"]) == (
        "OK",
        f"both {fitting}",
    )

    wrong = check(other, other)["cgroup driver"]
    if systemd:  # cgroupfs under a running systemd: two managers of one tree
        assert (wrong["status"], wrong["detail"]) == (
            "WARN",
            "cgroupfs on a systemd host: two managers write the cgroup tree",
        )
    else:
        assert (wrong["status"], "systemd is not running" in wrong["detail"]) == ("FAIL", True), wrong

    for driver, kubelet_driver in ((fitting, other), (other, fitting)):
        mismatch = check(driver, kubelet_driver)["cgroup driver vs kubelet"]
        assert mismatch["status"] == "FAIL", mismatch
        assert mismatch["detail"] == f"moorage uses {driver}, {kubelet} says cgroupDriver: {kubelet_driver}"


def io_devices(cgroup: str) -> dict[str, tuple[int, int]]:
    """``major:minor`` → (bytes read, bytes written) from the cgroup's own file: v2 io.stat, v1 blkio's."""
    out: dict[str, tuple[int, int]] = {}
    if cgroups.is_v2():
        for line in cgroups.read(cgroups.directory("io", cgroup) / "io.stat").splitlines():
            device, *items = line.split()
            values = dict(item.split("=", 1) for item in items)
            out[device] = (int(values["rbytes"]), int(values["wbytes"]))
        return out
    path = cgroups.directory("blkio", cgroup) / "blkio.throttle.io_service_bytes_recursive"
    for line in cgroups.read(path).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("Read", "Write"):
            read, write = out.get(parts[0], (0, 0))
            out[parts[0]] = (int(parts[2]), write) if parts[1] == "Read" else (read, int(parts[2]))
    return out


def block_device_of(path: Path) -> str | None:
    """The /dev node of the block device ``path``'s filesystem is on, if it has one."""
    device = path.stat().st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    node = Path("/dev") / sysfs.resolve().name if sysfs.exists() else None
    return str(node) if node is not None and node.exists() else None


def test_metrics_and_stats_mirror_the_cgroup(pod: Pod) -> None:
    """ListPodSandboxMetrics as the kubelet reads it for /metrics/cadvisor: every sample described with its label
    keys, values matching the cgroup files. On v2 (the guest) the container first reads 4 MiB with O_DIRECT from
    the block device this checkout is on (a virtio disk there, given to the container read-only), so io.stat has
    reads to show whatever the page cache holds; the host's disks are left alone."""
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=64 * MIB)
    disk = block_device_of(Path(__file__)) if cgroups.is_v2() else None
    direct_read = "dd if=/dev/probe of=/dev/null bs=65536 count=64 iflag=direct 2>/dev/null; " if disk else ""
    script = f"{direct_read}{ONE_MIB_IN_THE_SHELL}; echo ready; while :; do sleep 1000; done"
    linux = pb.LinuxContainerConfig(
        resources=resources,
        security_context=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0)),  # reads the disk
    )
    devices = [pb.Device(container_path="/dev/probe", host_path=disk, permissions="r")] if disk else []
    container_id = pod.create("measured", "sh", "-c", script, linux=linux, devices=devices)
    with pod.node.client() as client:
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)
    wait_for_output(pod, container_id, "ready", seconds=60)
    cgroup = cgroups.container_cgroup(parent_of(pod), container_id)
    with pod.node.client() as client:
        described = {
            d.name: list(d.label_keys)
            for d in client.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=30).descriptors
        }
        answer = client.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30)
    devices_after = io_devices(cgroup)
    [ours] = [m for m in answer.pod_metrics if m.pod_sandbox_id == pod.id]
    [container] = [c for c in ours.container_metrics if c.container_id == container_id]
    meta = pod.config.metadata
    labels = [meta.name, meta.namespace, "measured", container_id, pod.image]
    samples: dict[tuple[str, ...], int] = {}
    for metric in container.metrics:
        assert len(metric.label_values) == len(described[metric.name]), metric
        assert list(metric.label_values[:5]) == labels
        samples[(metric.name, *metric.label_values[5:])] = metric.value.value

    assert samples[("container_spec_memory_limit_bytes",)] == 64 * MIB
    assert 512 * 1024 < samples[("container_memory_working_set_bytes",)] <= samples[("container_memory_usage_bytes",)]
    assert samples[("container_memory_usage_bytes",)] <= 64 * MIB
    assert samples[("container_processes",)] >= 2  # sh and its sleep
    assert samples[("container_start_time_seconds",)] == pod.status(container_id).started_at // 10**9
    assert samples[("container_cpu_usage_seconds_total",)] <= cgroups.cpu_usage_ns(cgroup) // 10**9
    assert ("container_cpu_cfs_periods_total",) in samples  # cpu.stat's nr_periods, v1 and v2 alike
    layers = pod.node.root / "containers"
    on = f"{os.major(layers.stat().st_dev)}:{os.minor(layers.stat().st_dev)}"
    assert 0 <= samples[("container_fs_usage_bytes", on)] < samples[("container_fs_limit_bytes", on)]
    for device, (read, written) in devices_after.items():  # counters: the metric was read first
        assert samples.get(("container_fs_reads_bytes_total", device), 0) <= read
        assert samples.get(("container_fs_writes_bytes_total", device), 0) <= written
    if disk:  # (v1's blkio counts only throttled I/O on current kernels)
        assert any(read > 0 for read, _ in devices_after.values()), devices_after
        assert any(samples.get(("container_fs_reads_bytes_total", d), 0) > 0 for d in devices_after), samples

    stats = container_stats(pod, container_id)
    unified = cgroups.CGROUP_ROOT if cgroups.is_v2() else cgroups.CGROUP_ROOT / "unified"  # hybrid: PSI lives there
    pressure = unified / cgroup.lstrip("/") / "cpu.pressure"
    if pressure.exists():  # PSI on (runc makes the cgroup in a hybrid host's cgroup2 tree too): the stats carry it
        assert stats.cpu.HasField("psi")
        assert stats.cpu.psi.Some.Total <= int(cgroups.read(pressure).split("total=")[1].split()[0]) * 1000
        assert stats.memory.HasField("psi")
        assert stats.io.HasField("psi")
        assert ("container_pressure_cpu_waiting_seconds_total",) in samples
    if cgroups.is_v2():
        assert stats.swap.swap_usage_bytes.value <= int(
            cgroups.read(cgroups.directory("memory", cgroup) / "memory.swap.current")
        )
