"""The kubelet with the runtime-facing feature gates on: EventedPLEG (container events from GetContainerEvents)
and PodAndContainerStatsFromCRI (/stats/summary and /metrics/cadvisor from the runtime's stats RPCs)."""

from __future__ import annotations

import re

from tests.kubelet.conftest import Node, wait_for
from tests.kubelet.manifests import container, pod
from tests.kubelet.pods import metric, net_dev, running, runtime_id, statuses
from tests.kubelet.stats import measured_pod

FEATURE_GATES = {"EventedPLEG": True, "PodAndContainerStatsFromCRI": True}
VERBOSITY = 4  # the Evented PLEG's own log lines are at V(4)


def test_evented_pleg_receives_container_events(node: Node) -> None:
    """The kubelet subscribes to GetContainerEvents, and a container's exit reaches it as an event that makes
    it relist that pod; the pod's other container runs on, started once (PodSandboxStatus gives the kubelet
    every container of the pod: without them it started them again and again)."""
    node.kubelet.write_manifest(
        pod(
            "evented",
            container("stays", "exec sleep 3600"),
            container("quits", "sleep 2; exit 3"),
            restartPolicy="Never",
        )
    )

    def quit_with_3() -> bool:
        state = statuses(node, "evented").get("quits", {}).get("state", {})
        return bool(state.get("terminated", {}).get("exitCode") == 3)

    wait_for("container quits terminated with exit code 3 in /pods", quit_with_3, 90)
    metrics = node.kubelet.get("/metrics")
    assert metric(metrics, "kubelet_evented_pleg_connection_success_count") >= 1
    assert metric(metrics, "kubelet_evented_pleg_connection_error_count") == 0
    assert metric(metrics, "kubelet_evented_pleg_connection_latency_seconds_count") >= 4  # pod, 2 created, ...
    quits = runtime_id(statuses(node, "evented")["quits"])
    relisted = re.compile(r"Evented PLEG: requested pod relist after container termination.*" + quits)
    wait_for("the kubelet relisting on the exit event", lambda: relisted.search(node.kubelet.log()), 30)

    stays = statuses(node, "evented")["stays"]
    assert "running" in stays["state"]
    assert stays["restartCount"] == 0
    with node.daemon.client() as client:
        (sandbox,) = [p for p in client.list_pods() if p.metadata.name.startswith("evented")]
        made = [c.id for c in client.list_containers() if c.pod_sandbox_id == sandbox.id]
    assert sorted(made) == sorted([runtime_id(stays), quits])


def test_stats_summary_from_cri(node: Node) -> None:
    """Every pod and container of /stats/summary has CPU, memory, filesystem and network figures, and they are
    the cgroup's, the writable layer's, the log's and the pod's eth0 counters."""
    stats, pids = measured_pod(node, "stats", network=True)
    (eth0,) = [i for i in stats["network"].get("interfaces") or [stats["network"]] if i["name"] == "eth0"]
    received, sent = net_dev(pids["idle"], "eth0")
    assert 0 < eth0["rxBytes"] <= received
    assert 0 < eth0["txBytes"] <= sent


CADVISOR_FAMILIES = (
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_cpu_system_seconds_total",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_memory_rss",
    "container_memory_cache",
    "container_memory_max_usage_bytes",
    "container_memory_failcnt",
    "container_spec_cpu_shares",
    "container_spec_cpu_period",
    "container_spec_memory_limit_bytes",
    "container_processes",
    "container_threads",
    "container_file_descriptors",
    "container_fs_usage_bytes",
    "container_fs_inodes_total",
    "container_last_seen",
    "container_start_time_seconds",
    "container_oom_events_total",
    "container_creation_time_seconds",
    "container_memory_total_active_file_bytes",
    "container_memory_total_inactive_file_bytes",
    "container_memory_file_dirty_bytes",
    "container_memory_file_writeback_bytes",
    "container_memory_workingset_refault_anon_total",
    "container_memory_workingset_refault_file_total",
)
"""What the kubelet's own cAdvisor answers for a pod's cgroup on this hybrid host with the gate off (the figures
a dashboard reads), but for its v2-only ones (pgscan, pgsteal, memory.events, which moorage leaves out on v1
rather than send as 0) and Docker's health state; the network families are the pod's, on its sandbox."""
NETWORK_FAMILIES = (
    "container_network_receive_bytes_total",
    "container_network_transmit_bytes_total",
    "container_network_receive_packets_total",
    "container_network_transmit_packets_total",
    "container_network_receive_errors_total",
    "container_network_transmit_errors_total",
)


def test_metrics_cadvisor_from_cri(node: Node) -> None:
    """/metrics/cadvisor, answered from ListPodSandboxMetrics: cAdvisor's families with a sample for each
    container of the pod (its name, id and image), the network ones for the pod's eth0."""
    sleeper = "exec sleep 3600"
    node.kubelet.write_manifest(pod("scraped", container("one", sleeper), container("two", sleeper)))
    wait_for("pod scraped running", lambda: running(node, "scraped"), 60)
    ids = {name: runtime_id(status) for name, status in statuses(node, "scraped").items()}

    def samples() -> list[str]:
        return [line for line in node.kubelet.get("/metrics/cadvisor").splitlines() if 'pod="scraped-' in line]

    wait_for("samples of pod scraped", lambda: any(f'id="{ids["two"]}"' in s for s in samples()), 60)
    lines = samples()
    for family in CADVISOR_FAMILIES:
        for name, cid in ids.items():
            label = re.compile(rf'^{family}{{.*container="{name}".*id="{cid}".*image="sha256:')
            assert any(label.search(s) for s in lines), (family, name)
    for family in NETWORK_FAMILIES:
        assert any(s.startswith(family + "{") and 'interface="eth0"' in s for s in lines), family
