"""Moorage killed and started again under a running kubelet: what a node upgrade or a crash looks like to it."""

from __future__ import annotations

import time

from tests.kubelet.conftest import Node, wait_for
from tests.kubelet.manifests import container, pod
from tests.kubelet.pods import container_pid, metric, running, runtime_id, statuses


def snapshot(node: Node, names: list[str]) -> dict[str, tuple[str, int]]:
    """Every container of the pods ``names``: (runtime id, restartCount), by ``pod/container``."""
    return {
        f"{name}/{c}": (runtime_id(status), int(status["restartCount"]))
        for name in names
        for c, status in statuses(node, name).items()
    }


def relists(node: Node) -> tuple[float, float]:
    """The kubelet's ListPodSandbox calls so far, and how many of them failed."""
    text, label = node.kubelet.get("/metrics"), '{operation_type="list_podsandbox"}'
    calls = metric(text, f"kubelet_runtime_operations_total{label}")
    return calls, metric(text, f"kubelet_runtime_operations_errors_total{label}")


def test_killed_runtime_restarts_under_the_kubelet(node: Node) -> None:
    """SIGKILL of the daemon, then a new one on the same root and state: the kubelet's calls fail while it is
    gone, and it reconnects (its relists succeed again) and finds every pod as it left it: the same containers,
    still running, with the same processes, none restarted and no sandbox or container made anew."""
    names = ["steady", "pair"]
    node.kubelet.write_manifest(pod("steady", container("main", "exec sleep 3600")))
    node.kubelet.write_manifest(
        pod("pair", container("one", "exec sleep 3600"), container("two", "while true; do sleep 1; done"))
    )
    wait_for("pods steady and pair running", lambda: all(running(node, name) for name in names), 60)
    time.sleep(3)  # a few PLEG relists: the kubelet has seen everything running
    before = snapshot(node, names)
    pids = {key: container_pid(node, cid) for key, (cid, _) in before.items()}
    with node.daemon.client() as client:
        sandboxes = sorted(p.id for p in client.list_pods())
        containers = sorted(c.id for c in client.list_containers())

    assert node.daemon.proc is not None
    seen = len(node.kubelet.log())
    node.daemon.proc.kill()
    node.daemon.proc.wait()
    socket = str(node.daemon.socket)
    wait_for("the kubelet failing to reach the runtime", lambda: socket in node.kubelet.log()[seen:], 60)
    node.daemon.start()
    since = [relists(node)]  # counted from the last failure seen

    def relisting() -> bool:
        (calls, failed), now = since[0], relists(node)
        if now[1] != failed:
            since[0] = now
        return now[1] == failed and now[0] >= calls + 3

    wait_for("the kubelet relisting through the new daemon", relisting, 90)
    time.sleep(3)  # room for the kubelet to act on what it found, should it want to

    assert all(running(node, name) for name in names)
    assert snapshot(node, names) == before
    assert {key: container_pid(node, cid) for key, (cid, _) in before.items()} == pids
    with node.daemon.client() as client:
        assert sorted(p.id for p in client.list_pods()) == sandboxes
        assert sorted(c.id for c in client.list_containers()) == containers


def test_pods_start_after_the_restart(node: Node) -> None:
    """The restarted daemon serves the kubelet's new pods too."""
    node.kubelet.write_manifest(pod("after", container("main", "exec sleep 3600")))
    wait_for("pod after running", lambda: running(node, "after"), 60)
