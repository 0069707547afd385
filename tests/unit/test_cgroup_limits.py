"""Pod-level cgroup limits (UpdatePodSandboxResources): what the kubelet's sums become, which files get which
values on v1 and v2 layouts, and all-or-nothing writes, against cgroup-shaped trees of real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument
from moorage.node import cgroup_limits
from moorage.node.cgroup_limits import PodLimits
from moorage.node.cgroupinfo import CgroupHost
from moorage.runtime.pods import pod_resources

R = pb.LinuxContainerResources
MIB = 1 << 20


def v1_host(root: Path) -> CgroupHost:
    return CgroupHost(
        "hybrid", {"memory": str(root / "memory"), "cpu": str(root / "cpu")}, str(root / "unified"), (), False
    )


def v2_host(root: Path) -> CgroupHost:
    return CgroupHost("v2", {}, str(root), ("cpu", "memory"), False)


def make(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (directory / name).write_text(value + "\n")
    return directory


@pytest.mark.parametrize(
    ("overhead", "total", "expected"),
    [
        (R(), R(memory_limit_in_bytes=256 * MIB, cpu_quota=50_000, cpu_period=100_000, cpu_shares=512),
         PodLimits(256 * MIB, 50_000, 100_000, 512)),
        (R(memory_limit_in_bytes=10 * MIB, cpu_quota=10_000, cpu_shares=100),
         R(memory_limit_in_bytes=100 * MIB, cpu_quota=20_000, cpu_shares=200),
         PodLimits(110 * MIB, 30_000, 100_000, 300)),
        # a container without a limit leaves the pod without one, whatever the overhead; shares at least 2
        (R(memory_limit_in_bytes=10 * MIB, cpu_quota=10_000), R(), PodLimits(0, -1, 100_000, 2)),
    ],
)  # fmt: skip
def test_the_pod_limits_are_the_overhead_plus_the_containers_sum(
    overhead: pb.LinuxContainerResources, total: pb.LinuxContainerResources, expected: PodLimits
) -> None:
    assert pod_resources.pod_limits(overhead, total) == expected


@pytest.mark.parametrize(
    ("r", "complaint"),
    [
        (R(memory_limit_in_bytes=-5), r"resources.memory_limit_in_bytes: -5 is negative"),
        (R(cpu_period=-2), r"resources.cpu_period: -2 is negative"),
        (R(cpu_shares=-1), r"resources.cpu_shares: -1 is negative"),
    ],
)
def test_values_no_cgroup_can_take_are_refused(r: pb.LinuxContainerResources, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        pod_resources.check(r, "resources")


def test_v1_files_get_the_limits_and_no_limit_is_minus_one(tmp_path: Path) -> None:
    host = v1_host(tmp_path)
    memory = make(tmp_path / "memory/pod", {"memory.limit_in_bytes": "9223372036854771712"})
    cpu = make(tmp_path / "cpu/pod", {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000", "cpu.shares": "1024"})
    cgroup_limits.apply(host, "/pod", PodLimits(64 * MIB, 25_000, 50_000, 256))
    assert (memory / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert [(cpu / f).read_text() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares")] == [
        "25000", "50000", "256"
    ]  # fmt: skip
    cgroup_limits.apply(host, "/pod", PodLimits(0, -1, 100_000, 2))
    assert (memory / "memory.limit_in_bytes").read_text() == "-1"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "-1"


def test_v2_files_get_the_limits_and_a_kubelets_weight_is_kept(tmp_path: Path) -> None:
    pod = make(tmp_path / "kubepods/pod", {"memory.max": "max", "cpu.max": "max 100000", "cpu.weight": "100"})
    host = v2_host(tmp_path)
    cgroup_limits.apply(host, "/kubepods/pod", PodLimits(64 * MIB, 25_000, 100_000, 1024))
    assert (pod / "memory.max").read_text() == str(64 * MIB)
    assert (pod / "cpu.max").read_text() == "25000 100000"
    assert (pod / "cpu.weight").read_text() == "100\n"  # the newer conversion of 1024, as a kubelet wrote it
    cgroup_limits.apply(host, "/kubepods/pod", PodLimits(0, -1, 100_000, 2048))
    assert [(pod / f).read_text() for f in ("memory.max", "cpu.max", "cpu.weight")] == ["max", "max 100000", "79"]


def test_a_refused_write_puts_back_what_was_written_before_it(tmp_path: Path) -> None:
    host = v1_host(tmp_path)
    memory = make(tmp_path / "memory/pod", {"memory.limit_in_bytes": "1048576000"})
    cpu = make(tmp_path / "cpu/pod", {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000", "cpu.shares": "1024"})
    (cpu / "cpu.shares").unlink()
    (cpu / "cpu.shares").symlink_to("/proc/sys/kernel/osrelease")  # read-only even for root: writing it fails
    with pytest.raises(FailedPrecondition, match=r"cannot write 256 to .*cpu/pod/cpu.shares"):
        cgroup_limits.apply(host, "/pod", PodLimits(64 * MIB, 25_000, 50_000, 256))
    assert (memory / "memory.limit_in_bytes").read_text() == "1048576000"
    assert [(cpu / f).read_text() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us")] == ["-1", "100000"]


def test_a_missing_pod_cgroup_is_not_made(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"pod cgroup .*/memory/gone does not exist"):
        cgroup_limits.apply(v1_host(tmp_path), "/gone", PodLimits(64 * MIB, -1, 100_000, 2))
    assert not (tmp_path / "memory/gone").exists()


def test_memory_usage_is_read_from_the_layouts_file(tmp_path: Path) -> None:
    make(tmp_path / "memory/pod", {"memory.usage_in_bytes": "12345"})
    make(tmp_path / "v2/pod", {"memory.current": "678"})
    assert cgroup_limits.memory_usage(v1_host(tmp_path), "/pod") == 12345
    assert cgroup_limits.memory_usage(v2_host(tmp_path / "v2"), "/pod") == 678
    assert cgroup_limits.memory_usage(v1_host(tmp_path), "/none") is None


def test_shares_are_capped_and_an_older_kubelets_negative_quota_is_no_limit() -> None:
    limits = pod_resources.pod_limits(R(cpu_shares=10, cpu_quota=-1), R(cpu_shares=262144, cpu_quota=-11))
    assert (limits.cpu_shares, limits.cpu_quota) == (262144, -1)
    pod_resources.check(R(cpu_quota=-11), "resources")  # accepted


def test_a_weight_the_kubelet_read_back_lossily_is_kept(tmp_path: Path) -> None:
    # 1024 shares -> weight 39 (linear) -> the kubelet reads back 998 shares, whose linear weight is 38
    pod = make(tmp_path / "pod", {"memory.max": "max", "cpu.max": "max 100000", "cpu.weight": "39"})
    cgroup_limits.apply(v2_host(tmp_path), "/pod", PodLimits(0, -1, 100_000, 998))
    assert (pod / "cpu.weight").read_text() == "39\n"


def test_the_memory_limit_reads_none_for_no_limit(tmp_path: Path) -> None:
    make(tmp_path / "memory/a", {"memory.limit_in_bytes": "9223372036854771712"})
    make(tmp_path / "memory/b", {"memory.limit_in_bytes": str(64 * MIB)})
    assert cgroup_limits.memory_limit(v1_host(tmp_path), "/a") is None
    assert cgroup_limits.memory_limit(v1_host(tmp_path), "/b") == 64 * MIB
