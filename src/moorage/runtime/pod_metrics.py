"""The CRI metrics RPCs: cAdvisor-named metrics of pods and containers, for a kubelet that serves
``/metrics/cadvisor`` from the runtime (feature gate PodAndContainerStatsFromCRI).

:data:`FAMILIES` is fixed at start (ListMetricDescriptors); the kubelet turns each family into a Prometheus
metric with exactly the descriptor's label keys, adds no labels itself and drops samples of undescribed names.
Label keys follow containerd: ``pod, namespace, container, id, image``, then the family's own (``device``,
``interface``). Container samples carry the container's name, id and image; pod samples (the network ones) carry
an empty container and image and the sandbox id. Values are UInt64, so the ``_seconds`` families hold whole
seconds, as in containerd and CRI-O; ``device`` is ``major:minor``. A value the host cannot tell (no cgroup file,
no PSI, a container that is not running) is left out rather than sent as 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from moorage.api.cri import pb
from moorage.node.netdev import InterfaceCounters
from moorage.observe.stats import CgroupStats, DiskUsage

LABELS = ("pod", "namespace", "container", "id", "image")
COUNTER, GAUGE = pb.MetricType.COUNTER, pb.MetricType.GAUGE
NS_PER_SECOND = 10**9
DEVICE, IFACE = ("device",), ("interface",)


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    type: pb.MetricType.ValueType
    extra: tuple[str, ...] = ()


FAMILIES = (
    Family("container_cpu_usage_seconds_total", "Cumulative cpu time consumed, in whole seconds.", COUNTER),
    Family("container_cpu_user_seconds_total", "Cumulative user cpu time consumed, in whole seconds.", COUNTER),
    Family("container_cpu_system_seconds_total", "Cumulative system cpu time consumed, in whole seconds.", COUNTER),
    Family("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", COUNTER),
    Family("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", COUNTER),
    Family("container_cpu_cfs_throttled_seconds_total", "Time the container was throttled, whole seconds.", COUNTER),
    Family("container_pressure_cpu_waiting_seconds_total", "Time some tasks waited for cpu (PSI some).", COUNTER),
    Family("container_pressure_cpu_stalled_seconds_total", "Time all tasks stalled on cpu (PSI full).", COUNTER),
    Family("container_pressure_memory_waiting_seconds_total", "Time some tasks waited for memory.", COUNTER),
    Family("container_pressure_memory_stalled_seconds_total", "Time all tasks stalled on memory.", COUNTER),
    Family("container_pressure_io_waiting_seconds_total", "Time some tasks waited for I/O.", COUNTER),
    Family("container_pressure_io_stalled_seconds_total", "Time all tasks stalled on I/O.", COUNTER),
    Family("container_memory_usage_bytes", "Current memory usage, regardless of when it was accessed.", GAUGE),
    Family("container_memory_working_set_bytes", "Current working set: usage minus inactive file memory.", GAUGE),
    Family("container_memory_rss", "Size of RSS (anonymous memory) in bytes.", GAUGE),
    Family("container_memory_swap", "Container swap usage in bytes.", GAUGE),
    Family("container_spec_memory_limit_bytes", "Memory limit for the container (0: none).", GAUGE),
    Family("container_oom_events_total", "Count of out of memory events observed for the container.", COUNTER),
    Family("container_processes", "Number of processes running inside the container.", GAUGE),
    Family("container_fs_reads_bytes_total", "Cumulative count of bytes read.", COUNTER, DEVICE),
    Family("container_fs_writes_bytes_total", "Cumulative count of bytes written.", COUNTER, DEVICE),
    Family("container_fs_reads_total", "Cumulative count of reads completed.", COUNTER, DEVICE),
    Family("container_fs_writes_total", "Cumulative count of writes completed.", COUNTER, DEVICE),
    Family("container_fs_usage_bytes", "Bytes the container's writable layer uses.", GAUGE, DEVICE),
    Family("container_fs_limit_bytes", "Bytes of the filesystem the writable layer is on.", GAUGE, DEVICE),
    Family("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", GAUGE),
    Family("container_network_receive_bytes_total", "Cumulative count of bytes received.", COUNTER, IFACE),
    Family("container_network_receive_packets_total", "Cumulative count of packets received.", COUNTER, IFACE),
    Family("container_network_receive_errors_total", "Cumulative count of receive errors.", COUNTER, IFACE),
    Family("container_network_receive_packets_dropped_total", "Received packets dropped.", COUNTER, IFACE),
    Family("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", COUNTER, IFACE),
    Family("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", COUNTER, IFACE),
    Family("container_network_transmit_errors_total", "Cumulative count of transmit errors.", COUNTER, IFACE),
    Family("container_network_transmit_packets_dropped_total", "Packets dropped on transmit.", COUNTER, IFACE),
)  # fmt: skip
_BY_NAME = {f.name: f for f in FAMILIES}


def descriptors() -> list[pb.MetricDescriptor]:
    return [pb.MetricDescriptor(name=f.name, help=f.help, label_keys=[*LABELS, *f.extra]) for f in FAMILIES]


def _metric(name: str, labels: tuple[str, ...], value: int | None, *extra: str) -> pb.Metric | None:
    family = _BY_NAME[name]
    if value is None:
        return None
    return pb.Metric(
        name=name, metric_type=family.type, label_values=[*labels, *extra], value=pb.UInt64Value(value=max(value, 0))
    )


def _seconds(ns: int | None) -> int | None:
    return None if ns is None else ns // NS_PER_SECOND


def container_metrics(
    labels: tuple[str, ...],
    cgroup: CgroupStats,
    started_at_ns: int,
    layer: tuple[str, DiskUsage, int] | None = None,
) -> list[pb.Metric]:
    """``labels``: values for :data:`LABELS`. ``started_at_ns``: 0 while the container has not started.
    ``layer``: the writable layer's device (``major:minor``), its usage and its filesystem's size, when known."""
    samples = [
        _metric("container_cpu_usage_seconds_total", labels, _seconds(cgroup.cpu_usage_ns)),
        _metric("container_cpu_user_seconds_total", labels, _seconds(cgroup.cpu_user_ns)),
        _metric("container_cpu_system_seconds_total", labels, _seconds(cgroup.cpu_system_ns)),
        _metric("container_memory_usage_bytes", labels, cgroup.memory_usage),
        _metric("container_memory_working_set_bytes", labels, cgroup.working_set),
        _metric("container_memory_rss", labels, cgroup.rss),
        _metric("container_memory_swap", labels, cgroup.swap_usage),
        _metric(
            "container_spec_memory_limit_bytes",
            labels,
            None if cgroup.memory_usage is None else (cgroup.memory_limit or 0),
        ),
        _metric("container_oom_events_total", labels, cgroup.oom_kills),
        _metric("container_processes", labels, cgroup.pids),
        _metric("container_start_time_seconds", labels, _seconds(started_at_ns) if started_at_ns else None),
        _metric("container_cpu_cfs_periods_total", labels, cgroup.cfs_periods),
        _metric("container_cpu_cfs_throttled_periods_total", labels, cgroup.cfs_throttled_periods),
        _metric("container_cpu_cfs_throttled_seconds_total", labels, _seconds(cgroup.cfs_throttled_ns)),
    ]
    for resource, pressure in cgroup.pressure.items():
        for kind, line in (("waiting", pressure.some), ("stalled", pressure.full)):
            if line is not None:
                name = f"container_pressure_{resource}_{kind}_seconds_total"
                samples.append(_metric(name, labels, line.total_us // 10**6))
    if layer is not None:
        layer_device, usage, size = layer
        samples += [
            _metric("container_fs_usage_bytes", labels, usage.used_bytes, layer_device),
            _metric("container_fs_limit_bytes", labels, size, layer_device),
        ]
    for device in cgroup.io:
        name = f"{device.major}:{device.minor}"
        samples += [
            _metric("container_fs_reads_bytes_total", labels, device.read_bytes, name),
            _metric("container_fs_writes_bytes_total", labels, device.write_bytes, name),
            _metric("container_fs_reads_total", labels, device.reads, name),
            _metric("container_fs_writes_total", labels, device.writes, name),
        ]
    return [m for m in samples if m is not None]


def network_metrics(labels: tuple[str, ...], interfaces: Iterable[InterfaceCounters]) -> list[pb.Metric]:
    """The pod's interfaces (its net namespace is shared by its containers), as pod-level samples."""
    samples = []
    for i in interfaces:
        for name, value in (
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_receive_packets_total", i.rx_packets),
            ("container_network_receive_errors_total", i.rx_errors),
            ("container_network_receive_packets_dropped_total", i.rx_dropped),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_transmit_packets_total", i.tx_packets),
            ("container_network_transmit_errors_total", i.tx_errors),
            ("container_network_transmit_packets_dropped_total", i.tx_dropped),
        ):
            metric = _metric(name, labels, value, i.name)
            if metric is not None:
                samples.append(metric)
    return samples
