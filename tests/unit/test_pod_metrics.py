"""The metrics RPCs' samples: every sample names a described family with exactly its label keys, unknown
values are left out, and /proc/net/dev parsing."""

from __future__ import annotations

from moorage.api.cri import pb
from moorage.node.netdev import InterfaceCounters, parse_net_dev
from moorage.observe.stats import CgroupStats, DeviceIo, DiskUsage, Pressure, PsiLine
from moorage.runtime import pod_metrics

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
    keys = {d.name: list(d.label_keys) for d in pod_metrics.descriptors()}
    for sample in samples:
        assert sample.name in keys, sample.name
        assert len(sample.label_values) == len(keys[sample.name]), sample


def test_descriptors_are_unique_and_start_with_the_common_labels() -> None:
    descriptors = pod_metrics.descriptors()
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
    samples = pod_metrics.container_metrics(LABELS, cgroup, started_at_ns=1_700_000_000_123_456_789)
    described(samples)
    by_name = {(s.name, tuple(s.label_values[5:])): s for s in samples}
    assert by_name[("container_cpu_usage_seconds_total", ())].value.value == 2  # whole seconds
    assert by_name[("container_cpu_usage_seconds_total", ())].metric_type == pb.MetricType.COUNTER
    assert by_name[("container_spec_memory_limit_bytes", ())].value.value == 0  # no limit, as cAdvisor says it
    assert by_name[("container_start_time_seconds", ())].value.value == 1_700_000_000
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
    samples = pod_metrics.container_metrics(LABELS, cgroup, 0, ("254:1", DiskUsage(1, 8192, 3), 1 << 30))
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
