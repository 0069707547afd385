"""The metrics RPCs as critest v1.37 checks them (cri-tools pkg/validate/pod.go, "should support
ListPodSandboxMetrics"), on a real daemon, on cgroup v1/hybrid and pure v2 alike (`make test-cgroupv2`): a running
busybox ``top`` with critest's resources gets a sample of every family critest expects, with as many label values
as the descriptor has keys, and the values agree with the cgroup files and /proc.

The pod here has no CNI network (loopback only), so the network families are left to test_pod_network; the
block I/O families are optional in critest too (v1's blkio counts only throttled I/O), and test_cgroups reads a
disk on v2 to check them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from moorage.cri import pb
from moorage.observe.cgroup_spec import weight_to_shares
from tests.fixtures import cgroups
from tests.fixtures.cgroup_pods import cg_node as cg_node  # noqa: PLC0414 (the fixture: a module daemon)
from tests.fixtures.cgroup_pods import parent_of
from tests.fixtures.cgroup_pods import pod as pod  # noqa: PLC0414 (a pod per OCI runtime)
from tests.fixtures.cgroups import MIB
from tests.fixtures.metrics import CRITEST_EXPECTED
from tests.fixtures.pods import Pod

pytestmark = [pytest.mark.integration, pytest.mark.cgroup]

OPTIONAL = {n for n in CRITEST_EXPECTED if n.startswith(("container_fs_reads", "container_fs_writes"))}
OPTIONAL |= {"container_blkio_device_usage_total"}
"""Block I/O: critest's optionalValuesForMetricDescriptors."""
NETWORK = {n for n in CRITEST_EXPECTED if n.startswith("container_network_")}
PRESSURE = {n for n in CRITEST_EXPECTED if n.startswith("container_pressure_")}
HUGETLB = {"container_hugetlb_usage_bytes", "container_hugetlb_max_usage_bytes"}
CRITEST_RESOURCES = pb.LinuxContainerResources(
    cpu_period=100000,
    cpu_quota=20000,
    cpu_shares=1024,
    memory_limit_in_bytes=64 * MIB,
    memory_swap_limit_in_bytes=64 * MIB,
)


def read_int(path: Path) -> int:
    text = cgroups.read(path)
    return 0 if text == "max" else int(text)


def proc_counts(pids: list[int]) -> tuple[int, int]:
    """Threads (/proc/<pid>/status) and sockets of ``pids``, as the kernel reports them."""
    threads = sockets = 0
    for pid in pids:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        threads += int(status["Threads"])
        fd = Path(f"/proc/{pid}/fd")
        sockets += sum(os.readlink(fd / name).startswith("socket:") for name in os.listdir(fd))
    return threads, sockets


def listed(pod: Pod, container_id: str) -> tuple[dict[str, list[str]], dict[tuple[str, ...], int]]:
    """The descriptors' label keys by name, and the pod's and container's samples by name and own label values;
    every sample has as many label values as its descriptor has keys."""
    with pod.node.client() as client:
        descriptors = client.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=30).descriptors
        answer = client.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30)
    assert all(d.help and d.label_keys for d in descriptors)
    keys = {d.name: list(d.label_keys) for d in descriptors}
    [ours] = [m for m in answer.pod_metrics if m.pod_sandbox_id == pod.id]
    [container] = [c for c in ours.container_metrics if c.container_id == container_id]
    samples: dict[tuple[str, ...], int] = {}
    for metric in [*ours.metrics, *container.metrics]:
        assert len(metric.label_values) == len(keys[metric.name]), metric
        samples[(metric.name, *metric.label_values[5:])] = metric.value.value
    return keys, samples


def test_a_running_container_has_a_sample_of_every_family_critest_expects(pod: Pod) -> None:
    """critest's container (busybox top with its resources) in a pod with a log directory and a cgroup parent."""
    linux = pb.LinuxContainerConfig(resources=CRITEST_RESOURCES)
    container_id = pod.create("container-for-metrics", "busybox", "top", linux=linux)
    with pod.node.client() as client:
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)
    before = time.time()
    keys, samples = listed(pod, container_id)
    after = time.time()
    assert keys.keys() >= CRITEST_EXPECTED, CRITEST_EXPECTED - keys.keys()
    cgroup = cgroups.container_cgroup(parent_of(pod), container_id)
    unified = cgroups.CGROUP_ROOT if cgroups.is_v2() else cgroups.CGROUP_ROOT / "unified"  # hybrid: PSI lives there
    required = CRITEST_EXPECTED - OPTIONAL - NETWORK - PRESSURE - HUGETLB
    if (unified / cgroup.lstrip("/") / "cpu.pressure").exists():  # PSI on
        required |= PRESSURE
    if any(cgroups.directory("hugetlb", cgroup).glob("hugetlb.*.current")):  # v2, hugetlb delegated (the guest)
        required |= {"container_hugetlb_usage_bytes"}
    found = {name for name, *_ in samples}
    assert found >= required, required - found
    assert int(before) <= samples[("container_last_seen",)] <= after
    assert samples[("container_start_time_seconds",)] == pod.status(container_id).started_at // 10**9
    for name, *labels in samples:
        if name == "container_blkio_device_usage_total":
            assert labels[0] == f"{labels[1]}:{labels[2]}"
            assert labels[3] in ("Read", "Write")
    layers = pod.node.root / "containers"
    device, fs = f"{os.major(layers.stat().st_dev)}:{os.minor(layers.stat().st_dev)}", os.statvfs(layers)
    assert samples[("container_fs_inodes_total", device)] == fs.f_files
    assert samples[("container_fs_inodes_free", device)] <= fs.f_files
    processes_match_proc(samples, cgroup)
    limits_match_the_cgroup(samples, cgroup)
    memory_matches_the_cgroup(samples, cgroup)


def processes_match_proc(samples: dict[tuple[str, ...], int], cgroup: str) -> None:
    procs = [int(p) for p in cgroups.read(cgroups.directory("memory", cgroup) / "cgroup.procs").split()]
    threads, sockets = proc_counts(procs)
    assert samples[("container_processes",)] == len(procs) == 1  # top
    assert samples[("container_threads",)] == threads
    assert samples[("container_sockets",)] == sockets == 0
    assert samples[("container_file_descriptors",)] >= 3  # stdin, stdout, stderr at least
    assert samples[("container_threads_max",)] == read_int(cgroups.directory("pids", cgroup) / "pids.max")  # max: 0
    soft = next(line for line in Path(f"/proc/{procs[0]}/limits").read_text().splitlines() if "open files" in line)
    assert samples[("container_ulimits_soft", "max_open_files")] == int(soft.split()[3])


def limits_match_the_cgroup(samples: dict[tuple[str, ...], int], cgroup: str) -> None:
    memory = cgroups.directory("memory", cgroup)
    assert samples[("container_spec_cpu_period",)] == 100000
    assert samples[("container_spec_cpu_quota",)] == 20000
    assert samples[("container_spec_memory_limit_bytes",)] == 64 * MIB
    assert samples[("container_spec_memory_reservation_limit_bytes",)] == 0
    if cgroups.is_v2():
        weight = int(cgroups.read(cgroups.directory("cpu", cgroup) / "cpu.weight"))
        assert samples[("container_spec_cpu_shares",)] == weight_to_shares(weight)  # 998 for runc 1.1's 39
        assert samples[("container_spec_memory_swap_limit_bytes",)] == read_int(memory / "memory.swap.max")  # 0
    else:
        assert samples[("container_spec_cpu_shares",)] == 1024
        memsw = memory / "memory.memsw.limit_in_bytes"  # memory and swap, as v1 limits them
        assert samples[("container_spec_memory_swap_limit_bytes",)] == (64 * MIB if memsw.exists() else 0)


def memory_matches_the_cgroup(samples: dict[tuple[str, ...], int], cgroup: str) -> None:
    memory = cgroups.directory("memory", cgroup)
    if cgroups.is_v2():
        assert samples[("container_memory_failcnt",)] == int(cgroups.flat_keyed(memory / "memory.events")["max"])
    else:
        assert samples[("container_memory_failcnt",)] == read_int(memory / "memory.failcnt")
    usage = samples[("container_memory_usage_bytes",)]
    assert samples[("container_memory_max_usage_bytes",)] >= usage > 0
    assert samples[("container_memory_cache",)] <= usage
    assert samples[("container_memory_mapped_file",)] <= usage
    faults = {(kind, scope): samples[("container_memory_failures_total", kind, scope)]
              for kind in ("pgfault", "pgmajfault") for scope in ("container", "hierarchy")}  # fmt: skip
    assert 0 < faults[("pgfault", "container")] <= faults[("pgfault", "hierarchy")]
    assert faults[("pgmajfault", "container")] <= faults[("pgmajfault", "hierarchy")]
