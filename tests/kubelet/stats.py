"""The kubelet's /stats/summary of a pod, checked against what the host says: the containers' cgroup files,
their writable layer and log files, the pod's network counters."""

from __future__ import annotations

from typing import Any

from tests.kubelet.conftest import Node, wait_for
from tests.kubelet.manifests import HOLDER, container, pod
from tests.kubelet.pods import (
    MB,
    cgroup_int,
    container_pid,
    running,
    runtime_id,
    statuses,
    summary_pod,
    working_set,
)


def measured_pod(node: Node, name: str, *, network: bool) -> tuple[dict[str, Any], dict[str, int]]:
    """Runs pod ``name`` (a ``holder`` container, see :data:`HOLDER`, and an ``idle`` one), waits for its
    complete summary (with the pod's network figures if ``network``) and checks every figure the pod and its
    containers have against the host; returns the summary and the containers' pids by name."""
    node.kubelet.write_manifest(pod(name, container("holder", HOLDER), container("idle", "exec sleep 3600")))
    wait_for(f"pod {name} running", lambda: running(node, name), 60)
    ids = {c: runtime_id(status) for c, status in statuses(node, name).items()}
    pids = {c: container_pid(node, cid) for c, cid in ids.items()}
    wait_for("holder holding its memory", lambda: working_set(pids["holder"]) > 24 * MB, 60)

    def complete() -> dict[str, Any] | None:
        found = summary_pod(node, name)
        by_name = {c["name"]: c for c in found["containers"]}
        if set(by_name) != set(ids) or (network and not found.get("network")):
            return None
        holder, figures = by_name["holder"], [found.get("cpu", {}).get("usageCoreNanoSeconds", 0)]
        figures += [found.get("memory", {}).get("workingSetBytes", 0) > 24 * MB, holder["rootfs"].get("usedBytes")]
        figures += [holder["memory"].get("workingSetBytes", 0) > 24 * MB]
        return found if all(figures) else None

    stats = wait_for(f"/stats/summary with pod {name} complete", complete, 90)
    assert isinstance(stats, dict)
    for figure in ("cpu", "memory", "ephemeral-storage"):
        assert stats.get(figure), figure
    assert stats["cpu"]["usageCoreNanoSeconds"] > 0
    assert stats["memory"]["workingSetBytes"] > 24 * MB

    for c in stats["containers"]:
        pid = pids[c["name"]]
        for figure in ("cpu", "memory", "rootfs", "logs"):
            assert c.get(figure), (c["name"], figure)
        assert 0 < c["cpu"]["usageCoreNanoSeconds"] <= cgroup_int(pid, "cpuacct", "cpuacct.usage")
        assert abs(c["memory"]["workingSetBytes"] - working_set(pid)) < 4 * MB, c["name"]
    holder = {c["name"]: c for c in stats["containers"]}["holder"]
    assert holder["rootfs"]["usedBytes"] >= 5 * MB
    (log,) = node.kubelet.pod_logs.glob(f"default_{name}-*/holder/0.log")
    assert holder["logs"]["usedBytes"] >= log.stat().st_size > 200 * len("log line 1")
    assert stats["ephemeral-storage"]["usedBytes"] >= holder["rootfs"]["usedBytes"] + holder["logs"]["usedBytes"]
    return stats, pids
