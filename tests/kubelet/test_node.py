"""A cluster user's view of pods a real kubelet (relist PLEG, cAdvisor stats) runs on moorage."""

from __future__ import annotations

from pathlib import Path

from tests.kubelet.conftest import Node, wait_for
from tests.kubelet.manifests import container, pod


def running(node: Node, name: str) -> bool:
    status = node.kubelet.pods().get(name, {}).get("status", {})
    states = [c.get("state", {}) for c in status.get("containerStatuses", [])]
    return bool(states) and all("running" in s for s in states)


def test_static_pod_runs(node: Node) -> None:
    node.kubelet.write_manifest(pod("hello", container("main", "echo hi; sleep 3600")))
    wait_for("pod hello running", lambda: running(node, "hello"), 40)


def test_removed_manifest_leaves_nothing(node: Node) -> None:
    """Removing the manifest stops and removes the pod: no pod or container in the runtime, no pod cgroup, no
    mount of the daemon's left for it."""
    manifest = node.kubelet.write_manifest(pod("goner", container("main", "sleep 3600")))
    wait_for("pod goner running", lambda: running(node, "goner"), 60)
    with node.daemon.client() as client:
        (sandbox,) = [p for p in client.list_pods() if p.metadata.name.startswith("goner")]
        uid = sandbox.metadata.uid
        manifest.unlink()
        wait_for(
            "pod goner removed from the runtime", lambda: not [p for p in client.list_pods() if p.id == sandbox.id]
        )
        assert not [c for c in client.list_containers() if c.pod_sandbox_id == sandbox.id]
    assert not [m for m in node.daemon.mounts() if sandbox.id in m]

    def pod_cgroups() -> list[Path]:
        return list(Path("/sys/fs/cgroup").glob(f"*{node.kubelet.cgroup_root}/kubepods/**/pod{uid}"))

    wait_for("the pod's cgroups removed", lambda: not pod_cgroups(), 60)
