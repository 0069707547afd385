"""Workloads as a cluster user writes them, run by a real kubelet on moorage: a pod's spec (volumes, identity,
resources) honoured, probes and restart policies, container log rotation, the kubelet's stats."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

from tests.kubelet.conftest import Node, wait_for
from tests.kubelet.manifests import container, pod
from tests.kubelet.pods import cgroup_value, container_pid, running, runtime_id, statuses
from tests.kubelet.stats import measured_pod

MI = 1024 * 1024

WRITER = """
printf '%s\\n' "$(id -u):$(id -g):$(id -G)" "$GREETING" "$*" > /host/writer
echo "from the writer" > /cache/note
exec sleep 3600
"""
READER = """
until [ -f /cache/note ]; do sleep 0.2; done
cat /cache/note > /host/reader
exec sleep 3600
"""


def test_pod_spec_is_honoured(node: Node) -> None:
    """Two containers: command and args, env, an emptyDir they share and a hostPath under the test's own dir,
    a non-root identity, and each container's requests and limits in its own cgroup's files."""
    host = node.kubelet.dir / "hostpath-spec"
    host.mkdir(mode=0o777)
    host.chmod(0o777)  # the containers run as uid 1000
    volumes = [{"name": "cache", "mountPath": "/cache"}, {"name": "host", "mountPath": "/host"}]
    writer = container(
        "writer",
        WRITER,
        env=[{"name": "GREETING", "value": "hello from env"}],
        volumeMounts=volumes,
        resources={"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "250m", "memory": "64Mi"}},
        securityContext={"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    )
    writer["args"] += ["argv0", "first arg", "second"]
    reader = container(
        "reader",
        READER,
        volumeMounts=volumes,
        resources={"requests": {"cpu": "200m", "memory": "48Mi"}, "limits": {"cpu": "500m", "memory": "96Mi"}},
    )
    node.kubelet.write_manifest(
        pod(
            "spec",
            writer,
            reader,
            securityContext={"runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4000]},
            volumes=[
                {"name": "cache", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": str(host), "type": "Directory"}},
            ],
        )
    )
    wait_for("pod spec running", lambda: running(node, "spec"), 60)
    wait_for("both containers wrote to the hostPath", lambda: (host / "reader").exists() and (host / "writer").exists())

    ids, greeting, args = (host / "writer").read_text().splitlines()
    uid, gid, groups = ids.split(":")
    assert (uid, gid) == ("1000", "3000")
    assert "4000" in groups.split()
    assert greeting == "hello from env"
    assert args == "first arg second"
    assert (host / "reader").read_text() == "from the writer\n"  # through the emptyDir
    assert (host / "writer").stat().st_uid == 1000

    expected = {"writer": (64 * MI, 25000, 102), "reader": (96 * MI, 50000, 204)}
    for name, status in statuses(node, "spec").items():
        memory, quota, shares = expected[name]
        pid = container_pid(node, runtime_id(status))
        assert int(cgroup_value(pid, "memory", "memory.limit_in_bytes")) == memory, name
        assert int(cgroup_value(pid, "cpu", "cpu.cfs_quota_us")) == quota, name
        assert int(cgroup_value(pid, "cpu", "cpu.cfs_period_us")) == 100000, name
        assert int(cgroup_value(pid, "cpu", "cpu.shares")) == shares, name


def restart_count(node: Node, pod_name: str, name: str) -> int:
    return int(statuses(node, pod_name).get(name, {}).get("restartCount", 0))


def test_failing_liveness_probe_restarts_the_container(node: Node) -> None:
    """An exec probe that passes, then fails once the container removed its file: the kubelet kills the
    container through the runtime and starts it again, attempt 1 then 2 (restartPolicy Always)."""
    probe = {
        "exec": {"command": ["cat", "/tmp/healthy"]},
        "initialDelaySeconds": 1,
        "periodSeconds": 1,
        "failureThreshold": 1,
        "terminationGracePeriodSeconds": 1,
    }
    script = "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600"
    node.kubelet.write_manifest(pod("liveness", container("main", script, livenessProbe=probe)))
    wait_for("pod liveness running", lambda: running(node, "liveness"), 60)
    first = runtime_id(statuses(node, "liveness")["main"])
    wait_for("restart 1", lambda: restart_count(node, "liveness", "main") >= 1, 90)
    wait_for("restart 2", lambda: restart_count(node, "liveness", "main") >= 2, 120)
    status = statuses(node, "liveness")["main"]
    assert runtime_id(status) != first
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 137  # killed: sleep has no SIGTERM handler as pid 1 of its namespace
    killed_for = re.compile(f'"ID":"{first}"}}.*containerMessage="Container main failed liveness probe')
    assert killed_for.search(node.kubelet.log())


def test_exit_code_3_on_failure_is_restarted_with_back_off(node: Node) -> None:
    """Under restartPolicy OnFailure a container that exits 3 is started again after a growing back-off
    (CrashLoopBackOff 10 s, then 20 s), and /pods reports exit code 3 as its last termination. The back-off is
    read in the kubelet's log: /pods shows the waiting reason only when the kubelet's status sync falls inside a
    back-off window, which a loaded machine does not always give."""
    node.kubelet.write_manifest(pod("fails", container("main", "sleep 1; exit 3"), restartPolicy="OnFailure"))

    def restarted_twice() -> dict[str, Any]:
        status = statuses(node, "fails").get("main", {})
        return status if int(status.get("restartCount", 0)) >= 2 and "terminated" in status["lastState"] else {}

    status = wait_for("two restarts after exit code 3", restarted_twice, 150)
    assert isinstance(status, dict)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert "back-off 10s restarting failed container=main pod=fails-" in node.kubelet.log()  # before restart 2
    doubled = "back-off 20s restarting failed container=main pod=fails-"  # once the second restart exited
    wait_for("the back-off doubled to 20 s", lambda: doubled in node.kubelet.log(), 60)


CHATTY_BATCHES = 30
CHATTY = f"""
pad=$(printf '%088d' 0)
for b in $(seq 0 {CHATTY_BATCHES - 1}); do
  seq $((b * 1000)) $((b * 1000 + 999)) | sed "s/^/line /; s/$/ $pad/"
  sleep 0.5
done
echo done
exec sleep 3600
"""
"""About 4.4 MB of CRI log (146 bytes a line) in 30 batches over 15 s or more. The kubelet looks every 3 s
(containerLogMonitorInterval) and rotates a file past 1Mi: a rotated file holds at most about 1 MiB plus 3 s of
writing (2 MiB), at least 1 MiB, so there are two to four rotations, and containerLogMaxFiles (5, that is up to
four rotated files) deletes none before the test reads them."""


def log_lines(*paths: Path) -> list[str]:
    """The lines of CRI log files read in order (records ``<time> <stream> <P|F> <message>``, a line's partial
    records joined to its final one, also across files), gunzipped if rotated and compressed."""
    lines, partial = [], ""
    for path in paths:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for record in data.decode().splitlines():
            _, _, tag, message = record.split(" ", 3)
            partial += message
            if tag == "F":
                lines.append(partial)
                partial = ""
    return lines


def test_log_rotation_loses_and_doubles_no_line(node: Node) -> None:
    """The kubelet rotates the container's log past containerLogMaxSize (1Mi): it renames the file and asks the
    runtime to reopen it (ReopenContainerLog). Read back in order, the rotated files and the current one hold
    every line the container wrote exactly once."""
    node.kubelet.write_manifest(pod("chatty", container("main", CHATTY)))
    wait_for("pod chatty running", lambda: running(node, "chatty"), 60)
    (pod_dir,) = node.kubelet.pod_logs.glob("default_chatty-*")
    current = pod_dir / "main" / "0.log"

    def settled() -> list[Path]:
        """The rotated files once the writer is done and the current file is too small to be rotated again."""
        rotated = sorted(p for p in current.parent.iterdir() if p.name.startswith("0.log."))
        done = current.stat().st_size < MI and log_lines(*rotated, current)[-1:] == ["done"]
        return rotated if done else []

    rotated = wait_for("the container done writing and its log rotated", settled, 120)
    assert isinstance(rotated, list)
    assert len(rotated) >= 2, rotated

    messages = log_lines(*rotated, current)
    assert messages[-1] == "done"
    numbers = [int(m.split()[1]) for m in messages[:-1]]
    assert numbers == list(range(CHATTY_BATCHES * 1000))
    assert all(m.endswith(" " + "0" * 88) for m in messages[:-1])


def test_stats_summary_from_cadvisor_and_cri(node: Node) -> None:
    """The gate off: the pod's CPU and memory come from cAdvisor's view of its cgroup, the containers' from the
    runtime's ContainerStats (ListContainerStats), the filesystem figures from both; all match the host.
    cAdvisor knows no moorage containers (the kubelet builds it with containerd's and CRI-O's handlers only),
    so the pod's network figures need the PodAndContainerStatsFromCRI gate (test_feature_gates)."""
    measured_pod(node, "measured", network=False)
