"""The CRI metrics RPCs: cAdvisor-named metrics of pods and containers, for a kubelet that serves
``/metrics/cadvisor`` from the runtime (feature gate PodAndContainerStatsFromCRI).

:data:`FAMILIES` is fixed at start (ListMetricDescriptors); the kubelet turns each family into a Prometheus
metric with exactly the descriptor's label keys, adds no labels itself and drops samples of undescribed names.
Label keys follow containerd: ``pod, namespace, container, id, image``, then the family's own (``device``,
``interface``, ...). Container samples carry the container's name, id and image; pod samples (the network ones)
carry an empty container and image and the sandbox id. Values are UInt64, so the ``_seconds`` families hold whole
seconds, as in containerd and CRI-O; ``device`` is ``major:minor``. A value the host cannot tell (no cgroup file,
no PSI, a container that is not running) is left out rather than sent as 0; a limit that is not set is 0, as
cAdvisor reports it.

Where each family comes from, besides the cgroup's usage (:mod:`moorage.observe.stats`):

- ``container_spec_*`` and ``container_threads_max``: the limits the cgroup holds (:mod:`~moorage.observe.cgroup_spec`).
- ``container_threads``, ``_file_descriptors``, ``_sockets`` and ``_processes``: the processes of the container's
  cgroup.procs, counted in ``/proc`` (:mod:`moorage.node.procstats`); ``_ulimits_soft``: its init's limits.
- ``container_fs_usage_bytes`` and ``_inodes_*``: the writable layer and the filesystem it is on.
- ``container_memory_failures_total``: page faults, ``failure_type`` ``pgfault``/``pgmajfault`` by ``scope``
  ``container`` (the cgroup's own processes) and ``hierarchy`` (with its descendants), as cAdvisor labels them.
- ``container_blkio_device_usage_total``: bytes per device and ``operation`` (``Read``, ``Write``).
- ``container_memory_total_(in)active_file_bytes``, ``_file_dirty_bytes``, ``_file_writeback_bytes``,
  ``_workingset_refault_*``, ``_pgscan_total``, ``_pgsteal_total``: memory.stat (the last two v2 only);
  ``container_memory_events_*``: v2's memory.events; ``container_creation_time_seconds``: CreateContainer's time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from moorage.cri import pb
from moorage.node.netdev import InterfaceCounters
from moorage.node.procstats import ProcessCounts
from moorage.observe.cgroup_spec import CgroupSpec
from moorage.observe.disk import DiskUsage, Filesystem
from moorage.observe.stats import CgroupStats

LABELS = ("pod", "namespace", "container", "id", "image")
COUNTER, GAUGE = pb.MetricType.COUNTER, pb.MetricType.GAUGE
NS_PER_SECOND = 10**9
DEVICE, IFACE = ("device",), ("interface",)
BLKIO = ("device", "major", "minor", "operation")


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
    Family("container_memory_cache", "Number of bytes of page cache memory.", GAUGE),
    Family("container_memory_mapped_file", "Size of memory mapped files in bytes.", GAUGE),
    Family("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", GAUGE),
    Family("container_memory_swap", "Container swap usage in bytes.", GAUGE),
    Family("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", GAUGE),
    Family("container_memory_failcnt", "Number of memory usage hits limits.", COUNTER),
    Family("container_memory_total_active_file_bytes", "Current total active file in bytes.", GAUGE),
    Family("container_memory_total_inactive_file_bytes", "Current total inactive file in bytes.", GAUGE),
    Family("container_memory_file_dirty_bytes", "Bytes of page cache waiting to be written back.", GAUGE),
    Family("container_memory_file_writeback_bytes", "Bytes of page cache being written back.", GAUGE),
    Family("container_memory_workingset_refault_anon_total", "Refaults of evicted anonymous pages.", COUNTER),
    Family("container_memory_workingset_refault_file_total", "Refaults of evicted file pages.", COUNTER),
    Family("container_memory_pgscan_total", "Pages scanned by reclaim (cgroup v2).", COUNTER),
    Family("container_memory_pgsteal_total", "Pages reclaimed (cgroup v2).", COUNTER),
    Family("container_memory_events_high_total", "Times the usage went over memory.high (cgroup v2).", COUNTER),
    Family("container_memory_events_max_total", "Times the usage hit memory.max (cgroup v2).", COUNTER),
    Family("container_memory_failures_total", "Cumulative count of memory allocation failures.", COUNTER,
           ("failure_type", "scope")),
    Family("container_hugetlb_usage_bytes", "Hugepage usage in bytes.", GAUGE, ("pagesize",)),
    Family("container_hugetlb_max_usage_bytes", "Hugepage maximum usage in bytes (cgroup v1 only).", GAUGE,
           ("pagesize",)),
    Family("container_spec_memory_limit_bytes", "Memory limit for the container (0: none).", GAUGE),
    Family("container_spec_memory_reservation_limit_bytes", "Memory reservation limit (0: none).", GAUGE),
    Family("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container (0: none).", GAUGE),
    Family("container_spec_cpu_period", "CPU period of the container, microseconds.", GAUGE),
    Family("container_spec_cpu_quota", "CPU quota of the container per period, microseconds.", GAUGE),
    Family("container_spec_cpu_shares", "CPU share of the container.", GAUGE),
    Family("container_oom_events_total", "Count of out of memory events observed for the container.", COUNTER),
    Family("container_processes", "Number of processes running inside the container.", GAUGE),
    Family("container_threads", "Number of threads running inside the container.", GAUGE),
    Family("container_threads_max", "Maximum number of threads allowed in the container (0: no limit).", GAUGE),
    Family("container_file_descriptors", "Number of open file descriptors for the container.", GAUGE),
    Family("container_sockets", "Number of open sockets for the container.", GAUGE),
    Family("container_ulimits_soft", "Soft ulimit values of the container's root process.", GAUGE, ("ulimit",)),
    Family("container_fs_reads_bytes_total", "Cumulative count of bytes read.", COUNTER, DEVICE),
    Family("container_fs_writes_bytes_total", "Cumulative count of bytes written.", COUNTER, DEVICE),
    Family("container_fs_reads_total", "Cumulative count of reads completed.", COUNTER, DEVICE),
    Family("container_fs_writes_total", "Cumulative count of writes completed.", COUNTER, DEVICE),
    Family("container_blkio_device_usage_total", "Blkio device bytes usage.", COUNTER, BLKIO),
    Family("container_fs_usage_bytes", "Bytes the container's writable layer uses.", GAUGE, DEVICE),
    Family("container_fs_limit_bytes", "Bytes of the filesystem the writable layer is on.", GAUGE, DEVICE),
    Family("container_fs_inodes_total", "Inodes of the filesystem the writable layer is on.", GAUGE, DEVICE),
    Family("container_fs_inodes_free", "Free inodes of the filesystem the writable layer is on.", GAUGE, DEVICE),
    Family("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", GAUGE),
    Family("container_creation_time_seconds", "Creation time of the container since unix epoch in seconds.", GAUGE),
    Family("container_last_seen", "Last time the container was seen by the exporter, unix seconds.", GAUGE),
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
V2_ONLY = frozenset({
    "container_memory_pgscan_total", "container_memory_pgsteal_total",
    "container_memory_events_high_total", "container_memory_events_max_total",
})  # fmt: skip
"""Families only a cgroup v2 host has values for: not described elsewhere, since a described family must have
samples (critest checks each descriptor's labels against the samples)."""


@dataclass(frozen=True)
class ContainerReading:
    """Everything read of one running container for its samples; what could not be read is None."""

    cgroup: CgroupStats
    seen_at_ns: int
    started_at_ns: int = 0  # 0 while the container has not started
    created_at_ns: int = 0
    spec: CgroupSpec | None = None
    processes: ProcessCounts | None = None
    open_files_soft_limit: int | None = None
    layer: DiskUsage | None = None  # the writable layer's usage
    filesystem: Filesystem | None = None  # the filesystem the writable layer is on


def descriptors(unified: bool) -> list[pb.MetricDescriptor]:
    """The families this host's layout gives values for (``unified``: pure cgroup v2)."""
    return [
        pb.MetricDescriptor(name=f.name, help=f.help, label_keys=[*LABELS, *f.extra])
        for f in FAMILIES
        if unified or f.name not in V2_ONLY
    ]


def _metric(name: str, labels: tuple[str, ...], value: int | None, *extra: str) -> pb.Metric | None:
    family = _BY_NAME[name]
    if value is None:
        return None
    return pb.Metric(
        name=name, metric_type=family.type, label_values=[*labels, *extra], value=pb.UInt64Value(value=max(value, 0))
    )


def _seconds(ns: int | None) -> int | None:
    return None if ns is None else ns // NS_PER_SECOND


def container_metrics(labels: tuple[str, ...], reading: ContainerReading) -> list[pb.Metric]:
    """``labels``: values for :data:`LABELS`."""
    cgroup = reading.cgroup
    known_memory = cgroup.memory_usage is not None
    samples = [
        _metric("container_cpu_usage_seconds_total", labels, _seconds(cgroup.cpu_usage_ns)),
        _metric("container_cpu_user_seconds_total", labels, _seconds(cgroup.cpu_user_ns)),
        _metric("container_cpu_system_seconds_total", labels, _seconds(cgroup.cpu_system_ns)),
        _metric("container_memory_usage_bytes", labels, cgroup.memory_usage),
        _metric("container_memory_working_set_bytes", labels, cgroup.working_set),
        _metric("container_memory_rss", labels, cgroup.rss),
        _metric("container_memory_cache", labels, cgroup.cache),
        _metric("container_memory_mapped_file", labels, cgroup.mapped_file),
        _metric("container_memory_kernel_usage", labels, cgroup.kernel),
        _metric("container_memory_swap", labels, cgroup.swap_usage),
        _metric("container_memory_max_usage_bytes", labels, cgroup.max_usage),
        _metric("container_memory_failcnt", labels, cgroup.failcnt),
        _metric("container_spec_memory_limit_bytes", labels, (cgroup.memory_limit or 0) if known_memory else None),
        _metric("container_oom_events_total", labels, cgroup.oom_kills),
        _metric("container_start_time_seconds", labels, _seconds(reading.started_at_ns or None)),
        _metric("container_creation_time_seconds", labels, _seconds(reading.created_at_ns or None)),
        _metric("container_last_seen", labels, _seconds(reading.seen_at_ns)),
        _metric("container_cpu_cfs_periods_total", labels, cgroup.cfs_periods),
        _metric("container_cpu_cfs_throttled_periods_total", labels, cgroup.cfs_throttled_periods),
        _metric("container_cpu_cfs_throttled_seconds_total", labels, _seconds(cgroup.cfs_throttled_ns)),
    ]
    for scope, minor, major in (
        ("container", cgroup.own_page_faults, cgroup.own_major_page_faults),
        ("hierarchy", cgroup.page_faults, cgroup.major_page_faults),
    ):
        samples += [
            _metric("container_memory_failures_total", labels, minor, "pgfault", scope),
            _metric("container_memory_failures_total", labels, major, "pgmajfault", scope),
        ]
    for page in cgroup.hugetlb:
        samples += [
            _metric("container_hugetlb_usage_bytes", labels, page.usage, page.pagesize),
            _metric("container_hugetlb_max_usage_bytes", labels, page.max_usage, page.pagesize),
        ]
    for resource, pressure in cgroup.pressure.items():
        for kind, line in (("waiting", pressure.some), ("stalled", pressure.full)):
            if line is not None:
                name = f"container_pressure_{resource}_{kind}_seconds_total"
                samples.append(_metric(name, labels, line.total_us // 10**6))
    samples += _memory_detail_samples(labels, cgroup)
    samples += _spec_samples(labels, reading.spec)
    samples += _process_samples(labels, reading)
    samples += _disk_samples(labels, reading)
    return [m for m in samples if m is not None]


def _memory_detail_samples(labels: tuple[str, ...], cgroup: CgroupStats) -> list[pb.Metric | None]:
    """memory.stat's LRU, writeback, refault and reclaim counters and memory.events (what the host has of them)."""
    return [
        _metric("container_memory_total_active_file_bytes", labels, cgroup.active_file),
        _metric("container_memory_total_inactive_file_bytes", labels, cgroup.inactive_file),
        _metric("container_memory_file_dirty_bytes", labels, cgroup.dirty),
        _metric("container_memory_file_writeback_bytes", labels, cgroup.writeback),
        _metric("container_memory_workingset_refault_anon_total", labels, cgroup.refault_anon),
        _metric("container_memory_workingset_refault_file_total", labels, cgroup.refault_file),
        _metric("container_memory_pgscan_total", labels, cgroup.pgscan),
        _metric("container_memory_pgsteal_total", labels, cgroup.pgsteal),
        _metric("container_memory_events_high_total", labels, cgroup.events_high),
        _metric("container_memory_events_max_total", labels, cgroup.events_max),
    ]


def _spec_samples(labels: tuple[str, ...], spec: CgroupSpec | None) -> list[pb.Metric | None]:
    """The cgroup's limits; the quota only when one is set, as cAdvisor sends it."""
    if spec is None:
        return []
    return [
        _metric("container_spec_cpu_period", labels, spec.cpu_period),
        _metric("container_spec_cpu_quota", labels, spec.cpu_quota or None),
        _metric("container_spec_cpu_shares", labels, spec.cpu_shares),
        _metric("container_spec_memory_reservation_limit_bytes", labels, spec.memory_reservation),
        _metric("container_spec_memory_swap_limit_bytes", labels, spec.memory_swap_limit),
        _metric("container_threads_max", labels, spec.pids_max),
    ]


def _process_samples(labels: tuple[str, ...], reading: ContainerReading) -> list[pb.Metric | None]:
    """Processes as cgroup.procs lists them (pids.current, which counts threads, where it cannot be read)."""
    counts = reading.processes
    processes = len(reading.cgroup.procs) if reading.cgroup.procs is not None else reading.cgroup.pids
    samples = [_metric("container_processes", labels, processes)]
    if counts is not None:
        samples += [
            _metric("container_threads", labels, counts.threads),
            _metric("container_file_descriptors", labels, counts.file_descriptors),
            _metric("container_sockets", labels, counts.sockets),
        ]
    samples.append(_metric("container_ulimits_soft", labels, reading.open_files_soft_limit, "max_open_files"))
    return samples


def _disk_samples(labels: tuple[str, ...], reading: ContainerReading) -> list[pb.Metric | None]:
    """The writable layer on its filesystem's device, and the cgroup's block I/O per device."""
    samples: list[pb.Metric | None] = []
    fs = reading.filesystem
    if fs is not None:
        used = reading.layer.used_bytes if reading.layer is not None else None
        samples += [
            _metric("container_fs_usage_bytes", labels, used, fs.device),
            _metric("container_fs_limit_bytes", labels, fs.size_bytes, fs.device),
            _metric("container_fs_inodes_total", labels, fs.inodes, fs.device),
            _metric("container_fs_inodes_free", labels, fs.inodes_free, fs.device),
        ]
    for device in reading.cgroup.io:
        name, major, minor = f"{device.major}:{device.minor}", str(device.major), str(device.minor)
        samples += [
            _metric("container_fs_reads_bytes_total", labels, device.read_bytes, name),
            _metric("container_fs_writes_bytes_total", labels, device.write_bytes, name),
            _metric("container_fs_reads_total", labels, device.reads, name),
            _metric("container_fs_writes_total", labels, device.writes, name),
            _metric("container_blkio_device_usage_total", labels, device.read_bytes, name, major, minor, "Read"),
            _metric("container_blkio_device_usage_total", labels, device.write_bytes, name, major, minor, "Write"),
        ]
    return samples


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
