"""The kubelet with the runtime-facing feature gates on: EventedPLEG (container events from GetContainerEvents)
and PodAndContainerStatsFromCRI (/stats/summary and /metrics/cadvisor from the runtime's stats RPCs)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.kubelet.conftest import Node, wait_for
from tests.kubelet.manifests import container, pod
from tests.kubelet.node import NODE_NAME
from tests.kubelet.pods import cgroup_dir, container_pid, running, runtime_id, statuses

FEATURE_GATES = {"EventedPLEG": True, "PodAndContainerStatsFromCRI": True}
VERBOSITY = 4  # the Evented PLEG's own log lines are at V(4)
MB = 1000 * 1000


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` in Prometheus text (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


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


HOLDER = """
head -c 5000000 /dev/urandom > /tmp/blob
for i in $(seq 1 200); do echo "log line $i"; done
x=$(head -c 24000000 /dev/zero | tr '\\0' a)
while true; do sleep 1; done
"""
"""Five MB in the writable layer, some log, 24 MB of memory held by the shell (no exec: it must stay)."""


def summary_pod(node: Node, name: str) -> dict[str, Any]:
    pods = json.loads(node.kubelet.get("/stats/summary"))["pods"]
    (found,) = [p for p in pods if p["podRef"]["name"] == f"{name}-{NODE_NAME}"]
    return dict(found)


def cgroup_int(pid: int, controller: str, name: str) -> int:
    return int((cgroup_dir(pid, controller) / name).read_text().split()[0])


def working_set(pid: int) -> int:
    memory = cgroup_dir(pid, "memory")
    stat = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
    return int((memory / "memory.usage_in_bytes").read_text()) - int(stat["total_inactive_file"])


def net_dev(pid: int, interface: str) -> tuple[int, int]:
    """Received and transmitted bytes of ``interface`` in the network namespace of ``pid``."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, counters = line.split(":", 1)
        if name.strip() == interface:
            fields = counters.split()
            return int(fields[0]), int(fields[8])
    raise LookupError(f"no {interface} in the network namespace of {pid}")


def test_stats_summary_from_cri(node: Node) -> None:
    """Every pod and container of /stats/summary has CPU, memory, filesystem and network figures, and they are
    the cgroup's, the writable layer's, the log's and the pod's eth0 counters."""
    node.kubelet.write_manifest(pod("stats", container("holder", HOLDER), container("idle", "exec sleep 3600")))
    wait_for("pod stats running", lambda: running(node, "stats"), 60)
    ids = {name: runtime_id(status) for name, status in statuses(node, "stats").items()}
    pids = {name: container_pid(node, cid) for name, cid in ids.items()}
    wait_for("holder holding its memory", lambda: working_set(pids["holder"]) > 24 * MB, 60)

    def complete() -> dict[str, Any] | None:
        found = summary_pod(node, "stats")
        by_name = {c["name"]: c for c in found["containers"]}
        ready = set(by_name) == set(ids) and by_name["holder"]["memory"].get("workingSetBytes", 0) > 24 * MB
        return found if ready and found.get("network") and by_name["holder"]["rootfs"].get("usedBytes") else None

    stats = wait_for("/stats/summary with the stats pod complete", complete, 90)
    assert isinstance(stats, dict)
    for figure in ("cpu", "memory", "network", "ephemeral-storage"):
        assert stats.get(figure), figure
    assert stats["cpu"]["usageCoreNanoSeconds"] > 0
    assert stats["memory"]["workingSetBytes"] > 24 * MB

    for c in stats["containers"]:
        name, pid = c["name"], pids[c["name"]]
        for figure in ("cpu", "memory", "rootfs", "logs"):
            assert c.get(figure), (name, figure)
        assert 0 < c["cpu"]["usageCoreNanoSeconds"] <= cgroup_int(pid, "cpuacct", "cpuacct.usage")
        assert abs(c["memory"]["workingSetBytes"] - working_set(pid)) < 4 * MB, name
    holder = {c["name"]: c for c in stats["containers"]}["holder"]
    assert holder["rootfs"]["usedBytes"] >= 5 * MB
    (log,) = node.kubelet.pod_logs.glob("default_stats-*/holder/0.log")
    assert holder["logs"]["usedBytes"] >= log.stat().st_size > 200 * len("log line 1")
    assert stats["ephemeral-storage"]["usedBytes"] >= holder["rootfs"]["usedBytes"] + holder["logs"]["usedBytes"]

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
)
"""What cAdvisor answers for every container (the figures a dashboard reads); the network families are the
pod's, on its sandbox."""
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
