"""A pod with ``hostUsers: false`` as the kubelet runs it on moorage: the kubelet offers it only because Status
reports user_namespaces, allocates its ids and sends its volumes; inside, root is the pod's mapped range."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moorage.cri import pb
from moorage.node import idmap
from tests.kubelet.conftest import Node, wait_for
from tests.kubelet.manifests import container, pod

SCRIPT = (
    "cat /proc/self/uid_map; id -u; stat -c %u /etc/hosts /dev/termination-log; echo bye > /dev/termination-log;"
    " touch /data/made-by-root && echo made; sleep 3600"
)


def test_a_pod_without_host_users_runs_in_its_own_user_namespace(node: Node, tmp_path: Path) -> None:
    if (reason := idmap.probe_node(tmp_path / "probe")) is not None:
        pytest.skip(f"this node cannot run pods in user namespaces: {reason}")
    manifest = pod(
        "userns",
        container("main", SCRIPT, volumeMounts=[{"name": "data", "mountPath": "/data"}]),
        hostUsers=False,
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    node.kubelet.write_manifest(manifest)

    def started() -> list[str]:
        with node.daemon.client() as client:
            (box,) = [p for p in client.list_pods() if p.metadata.name.startswith("userns")]
            (main,) = [c for c in client.list_containers() if c.pod_sandbox_id == box.id]
            status = client.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=main.id)).status
        lines = [line.split(" ", 3)[-1] for line in Path(status.log_path).read_text().splitlines()]
        assert "made" in lines
        return lines

    wait_for("the userns pod's container wrote its lines", started, 90)
    lines = started()
    host_id = int(lines[0].split()[1])
    assert lines[0].split() == ["0", str(host_id), "65536"]
    assert host_id >= 65536  # the kubelet's allocation, never the node's own ids
    assert lines[1:5] == ["0", "0", "0", "made"]
    (made,) = Path(node.kubelet.root / "pods").glob("*/volumes/kubernetes.io~empty-dir/data/made-by-root")
    owner = os.stat(made)
    # the kubelet asks for an idmapped emptyDir (root is 0 on disk) or a plain one (root is its host id)
    assert (owner.st_uid, owner.st_gid) in ((0, 0), (host_id, host_id))
