"""A cluster user's view of pods a real kubelet (relist PLEG, cAdvisor stats) runs on moorage."""

from __future__ import annotations

from tests.kubelet.conftest import Node, wait_for
from tests.kubelet.manifests import container, pod


def running(node: Node, name: str) -> bool:
    status = node.kubelet.pods().get(name, {}).get("status", {})
    states = [c.get("state", {}) for c in status.get("containerStatuses", [])]
    return bool(states) and all("running" in s for s in states)


def test_static_pod_runs(node: Node) -> None:
    node.kubelet.write_manifest(pod("hello", container("main", "echo hi; sleep 3600")))
    wait_for("pod hello running", lambda: running(node, "hello"), 40)
