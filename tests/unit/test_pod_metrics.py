"""The metrics RPCs' samples: every sample names a described family with exactly its label keys, unknown
values are left out, every family critest v1.37 expects is described and sampled, and /proc/net/dev parsing."""

from __future__ import annotations

from moorage.cri import pb
from moorage.node.netdev import InterfaceCounters, parse_net_dev
from moorage.node.procstats import ProcessCounts
from moorage.observe import pod_metrics
from moorage.observe.cgroup_spec import CgroupSpec
from moorage.observe.disk import DiskUsage, Filesystem
from moorage.observe.pod_metrics import ContainerReading
from moorage.observe.stats import CgroupStats, DeviceIo, Hugetlb, Pressure, PsiLine
from tests.fixtures.metrics import CRITEST_EXPECTED

LABELS = ("web-0", "default", "app", "c1", "registry.local/app:1")
NET_DEV = "\n".join(
    [
        "Inter-|   Receive                            |  Transmit",
        " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier",
        "    lo: 1234 12 0 0 0 0 0 0 1234 12 0 0 0 0 0 0",
        "  eth0: 987654 321 1 2 0 0 0 0 123456 210 3 4 0 0 0 0",
    ]
)


def described(samples: list[pb.Metric]) -> None:
    keys = {d.name: list(d.label_keys) for d in pod_metrics.descriptors(unified=True)}
    for sample in samples:
        assert sample.name in keys, sample.name
        assert len(sample.label_values) == len(keys[sample.name]), sample


def test_descriptors_are_unique_and_start_with_the_common_labels() -> None:
    descriptors = pod_metrics.descriptors(unified=True)
    assert len({d.name for d in descriptors}) == len(descriptors)
    assert all(list(d.label_keys[:5]) == ["pod", "namespace", "container", "id", "image"] for d in descriptors)


def test_container_samples_carry_units_labels_and_devices() -> None:
    cgroup = CgroupStats(
        timestamp=1,
        cpu_usage_ns=2_900_000_000,
        memory_usage=5000,
        working_set=4000,
        memory_limit=None,
        pids=3,
        io=(DeviceIo(253, 0, 8192, 4096, 2, 1),),
    )
    reading = ContainerReading(cgroup, seen_at_ns=1_700_000_100_000_000_000, started_at_ns=1_700_000_000_123_456_789)
    samples = pod_metrics.container_metrics(LABELS, reading)
    described(samples)
    by_name = {(s.name, tuple(s.label_values[5:])): s for s in samples}
    assert by_name[("container_cpu_usage_seconds_total", ())].value.value == 2  # whole seconds
    assert by_name[("container_cpu_usage_seconds_total", ())].metric_type == pb.MetricType.COUNTER
    assert by_name[("container_spec_memory_limit_bytes", ())].value.value == 0  # no limit, as cAdvisor says it
    assert by_name[("container_start_time_seconds", ())].value.value == 1_700_000_000
    assert by_name[("container_last_seen", ())].value.value == 1_700_000_100
    assert by_name[("container_processes", ())].value.value == 3  # no cgroup.procs read: pids.current
    assert by_name[("container_fs_reads_bytes_total", ("253:0",))].value.value == 8192
    assert by_name[("container_fs_writes_total", ("253:0",))].value.value == 1
    assert ("container_memory_swap", ()) not in by_name  # unknown: left out, not 0
    assert ("container_oom_events_total", ()) not in by_name
    assert all(list(s.label_values[:5]) == list(LABELS) for s in samples)


def test_net_dev_skips_lo_and_maps_the_columns() -> None:
    [eth0] = parse_net_dev(NET_DEV)
    assert eth0 == InterfaceCounters("eth0", 987654, 321, 1, 2, 123456, 210, 3, 4)
    samples = pod_metrics.network_metrics(("web-0", "default", "", "pod1", ""), [eth0])
    described(samples)
    values = {s.name: (s.label_values[-1], s.value.value) for s in samples}
    assert values["container_network_receive_bytes_total"] == ("eth0", 987654)
    assert values["container_network_transmit_packets_dropped_total"] == ("eth0", 4)
    assert len(samples) == 8


def test_throttling_pressure_and_the_writable_layer() -> None:
    cgroup = CgroupStats(
        timestamp=1,
        cfs_periods=100,
        cfs_throttled_periods=7,
        cfs_throttled_ns=3_500_000_000,
        pressure={
            "cpu": Pressure(PsiLine(2_600_000, 0, 0, 0), None),
            "io": Pressure(None, PsiLine(1_000_000, 0, 0, 0)),
        },
    )
    fs = Filesystem("254:1", 1 << 30, 65536, 60000)
    samples = pod_metrics.container_metrics(
        LABELS, ContainerReading(cgroup, 1, layer=DiskUsage(1, 8192, 3), filesystem=fs)
    )
    described(samples)
    values = {(s.name, *s.label_values[5:]): s.value.value for s in samples}
    assert values[("container_cpu_cfs_periods_total",)] == 100
    assert values[("container_cpu_cfs_throttled_periods_total",)] == 7
    assert values[("container_cpu_cfs_throttled_seconds_total",)] == 3
    assert values[("container_pressure_cpu_waiting_seconds_total",)] == 2  # "some": whole seconds
    assert values[("container_pressure_io_stalled_seconds_total",)] == 1  # "full"
    assert ("container_pressure_cpu_stalled_seconds_total",) not in values  # no "full" line for cpu here
    assert values[("container_fs_usage_bytes", "254:1")] == 8192
    assert values[("container_fs_limit_bytes", "254:1")] == 1 << 30
    assert values[("container_fs_inodes_total", "254:1")] == 65536
    assert values[("container_fs_inodes_free", "254:1")] == 60000


CADVISOR_ALSO = {
    "container_creation_time_seconds", "container_memory_total_active_file_bytes",
    "container_memory_total_inactive_file_bytes", "container_memory_file_dirty_bytes",
    "container_memory_file_writeback_bytes", "container_memory_workingset_refault_anon_total",
    "container_memory_workingset_refault_file_total", "container_memory_pgscan_total",
    "container_memory_pgsteal_total", "container_memory_events_high_total", "container_memory_events_max_total",
}  # fmt: skip
"""What the kubelet's own cAdvisor (v1.37, the gate off) also answers for a pod's cgroup, but critest does not ask
for (tests/kubelet compares the two); its container_health_state is Docker's health checks, no CRI notion."""

FULL = ContainerReading(
    CgroupStats(
        timestamp=1,
        cpu_usage_ns=5 * 10**9,
        cpu_user_ns=3 * 10**9,
        cpu_system_ns=2 * 10**9,
        cfs_periods=10,
        cfs_throttled_periods=1,
        cfs_throttled_ns=10**9,
        memory_usage=8 << 20,
        working_set=6 << 20,
        memory_limit=64 << 20,
        rss=4 << 20,
        cache=2 << 20,
        mapped_file=1 << 20,
        kernel=300_000,
        max_usage=9 << 20,
        failcnt=0,
        page_faults=500,
        major_page_faults=5,
        own_page_faults=400,
        own_major_page_faults=4,
        oom_kills=0,
        active_file=1 << 20,
        inactive_file=2 << 20,
        dirty=4096,
        writeback=0,
        refault_anon=6,
        refault_file=7,
        pgscan=80,
        pgsteal=70,
        events_high=2,
        events_max=0,
        swap_usage=0,
        pids=2,
        procs=(10, 11),
        hugetlb=(Hugetlb("2MB", 0, 0),),
        pressure={r: Pressure(PsiLine(1, 0, 0, 0), PsiLine(1, 0, 0, 0)) for r in ("cpu", "memory", "io")},
        io=(DeviceIo(8, 0, 4096, 512, 1, 1),),
    ),
    seen_at_ns=1_700_000_000 * 10**9,
    started_at_ns=1_600_000_000 * 10**9,
    created_at_ns=1_599_999_999 * 10**9 + 5,
    spec=CgroupSpec(100000, 20000, 1024, 0, 64 << 20, 0),
    processes=ProcessCounts(2, 3, 7, 1),
    open_files_soft_limit=1048576,
    layer=DiskUsage(1, 4096, 2),
    filesystem=Filesystem("254:1", 1 << 30, 65536, 60000),
)


def test_every_family_critest_expects_is_described_and_sampled_with_its_label_keys() -> None:
    """ListMetricDescriptors names every family critest v1.37 expects (help and label keys set), and a reading
    with every value known gives each of them a sample with as many label values as the family has keys."""
    descriptors = {d.name: d for d in pod_metrics.descriptors(unified=True)}
    assert descriptors.keys() >= CRITEST_EXPECTED | CADVISOR_ALSO, CRITEST_EXPECTED - descriptors.keys()
    assert all(d.help and d.label_keys for d in descriptors.values())
    eth0 = InterfaceCounters("eth0", 1, 1, 0, 0, 1, 1, 0, 0)
    samples = [
        *pod_metrics.network_metrics(("web-0", "default", "", "pod1", ""), [eth0]),
        *pod_metrics.container_metrics(LABELS, FULL),
    ]
    described(samples)
    assert {s.name for s in samples} == set(descriptors) == CRITEST_EXPECTED | CADVISOR_ALSO


def test_the_cadvisor_semantics_of_the_new_families() -> None:
    values = {(s.name, *s.label_values[5:]): s.value.value for s in pod_metrics.container_metrics(LABELS, FULL)}
    assert values[("container_memory_failures_total", "pgfault", "container")] == 400
    assert values[("container_memory_failures_total", "pgmajfault", "container")] == 4
    assert values[("container_memory_failures_total", "pgfault", "hierarchy")] == 500
    assert values[("container_memory_failures_total", "pgmajfault", "hierarchy")] == 5
    assert values[("container_blkio_device_usage_total", "8:0", "8", "0", "Read")] == 4096
    assert values[("container_blkio_device_usage_total", "8:0", "8", "0", "Write")] == 512
    assert values[("container_ulimits_soft", "max_open_files")] == 1048576
    assert values[("container_hugetlb_usage_bytes", "2MB")] == 0
    assert values[("container_processes",)] == 2  # cgroup.procs, not pids.current's tasks
    assert (values[("container_threads",)], values[("container_threads_max",)]) == (3, 0)  # 0: no limit
    assert (values[("container_file_descriptors",)], values[("container_sockets",)]) == (7, 1)
    assert values[("container_spec_cpu_period",)] == 100000
    assert values[("container_spec_cpu_quota",)] == 20000
    assert values[("container_spec_cpu_shares",)] == 1024
    assert values[("container_spec_memory_swap_limit_bytes",)] == 64 << 20
    assert values[("container_memory_max_usage_bytes",)] == 9 << 20
    assert (values[("container_memory_cache",)], values[("container_memory_mapped_file",)]) == (2 << 20, 1 << 20)
    assert values[("container_last_seen",)] == 1_700_000_000
    assert values[("container_creation_time_seconds",)] == 1_599_999_999
    assert values[("container_memory_total_active_file_bytes",)] == 1 << 20
    assert values[("container_memory_total_inactive_file_bytes",)] == 2 << 20
    assert (values[("container_memory_file_dirty_bytes",)], values[("container_memory_file_writeback_bytes",)]) == (
        4096,
        0,
    )
    assert values[("container_memory_workingset_refault_anon_total",)] == 6
    assert values[("container_memory_workingset_refault_file_total",)] == 7
    assert (values[("container_memory_pgscan_total",)], values[("container_memory_pgsteal_total",)]) == (80, 70)
    assert values[("container_memory_events_high_total",)] == 2


def test_no_quota_no_spec_and_no_processes_leave_their_samples_out() -> None:
    cgroup = CgroupStats(timestamp=1, memory_usage=1, hugetlb=(Hugetlb("1GB", 0, None),))
    reading = ContainerReading(cgroup, 1, spec=CgroupSpec(cpu_period=100000, cpu_quota=0))
    names = {(s.name, *s.label_values[5:]) for s in pod_metrics.container_metrics(LABELS, reading)}
    assert ("container_spec_cpu_period",) in names
    assert ("container_spec_cpu_quota",) not in names  # no quota: cAdvisor sends none
    assert ("container_hugetlb_max_usage_bytes", "1GB") not in names  # v2 keeps no peak
    assert ("container_hugetlb_usage_bytes", "1GB") in names
    assert not {n for n in names if n[0] in ("container_threads", "container_sockets", "container_ulimits_soft")}
    assert not {n for n in names if n[0].startswith(("container_memory_pgs", "container_memory_events_"))}  # v1
    assert ("container_creation_time_seconds",) not in names


def test_families_only_cgroup_v2_has_are_not_described_elsewhere() -> None:
    v1 = {d.name for d in pod_metrics.descriptors(unified=False)}
    v2 = {d.name for d in pod_metrics.descriptors(unified=True)}
    assert v2 - v1 == pod_metrics.V2_ONLY
    assert "container_memory_pgscan_total" in pod_metrics.V2_ONLY
