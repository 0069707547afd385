"""What the kubelet suite reads about a pod: the kubelet's /pods and /stats/summary views of it, and the
runtime's own view (its containers' processes, their cgroup files and network counters on the host)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.kubelet.conftest import Node
from tests.kubelet.node import NODE_NAME

CGROUP_V1 = Path("/sys/fs/cgroup")
MB = 1000 * 1000


def statuses(node: Node, name: str) -> dict[str, dict[str, Any]]:
    """The pod's containerStatuses in the kubelet's /pods, by container name ({} while it has none)."""
    status = node.kubelet.pods().get(name, {}).get("status", {})
    return {c["name"]: c for c in status.get("containerStatuses") or []}


def running(node: Node, name: str) -> bool:
    states = [c.get("state", {}) for c in statuses(node, name).values()]
    return bool(states) and all("running" in s for s in states)


def runtime_id(status: dict[str, Any]) -> str:
    """The runtime's container id in a kubelet containerStatus (``moorage://<id>``)."""
    return str(status["containerID"]).split("://", 1)[1]


def container_pid(node: Node, container_id: str) -> int:
    with node.daemon.client() as client:
        info = client.container_status(container_id, verbose=True).info["info"]
    return int(json.loads(info)["pid"])


def cgroup_dir(pid: int, controller: str) -> Path:
    """The v1 ``controller`` hierarchy's directory of the cgroup ``pid`` is in, from /proc/<pid>/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP_V1 / controllers / path.lstrip("/")
    raise LookupError(f"process {pid} is in no {controller} cgroup")


def cgroup_value(pid: int, controller: str, name: str) -> str:
    return (cgroup_dir(pid, controller) / name).read_text().strip()


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


def metric(text: str, series: str) -> float:
    """The value of ``series`` (``name`` or ``name{label="value",...}`` as written) in Prometheus text, 0 when
    absent."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
