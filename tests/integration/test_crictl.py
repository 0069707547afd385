"""crictl (cri-tools v1.37, built by ``make cri-tools``) against a real daemon: the README's walk-through.

crictl is the field's own CRI client; every command here is one the README shows, run as an operator would,
with a crictl.yaml naming the daemon's socket. Each step checks what crictl printed against what the daemon
and the host show.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.crictl import CRICTL
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration


@pytest.fixture
def crictl_config(node: DaemonProcess, tmp_path: Path) -> Iterator[Path]:
    """A crictl.yaml for the node (the README's example, with the test's socket); pods left by a
    failing test are removed afterwards."""
    if not CRICTL.exists():
        pytest.fail(f"{CRICTL} is missing: `make cri-tools` builds it (make test does)")
    config = tmp_path / "crictl.yaml"
    config.write_text(
        f"runtime-endpoint: {node.endpoint}\nimage-endpoint: {node.endpoint}\ntimeout: 60\ndebug: false\n"
    )
    try:
        yield config
    finally:
        node.remove_all_pods()


def crictl(config: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [str(CRICTL), "--config", str(config), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"crictl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def write_json(path: Path, data: dict[str, Any]) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_crictl_walkthrough(crictl_config: Path, busybox: PushedImage, cgroup_parent: str, tmp_path: Path) -> None:
    config = crictl_config
    version = crictl(config, "version")
    assert "RuntimeName:  moorage" in version
    assert "RuntimeApiVersion:  v1" in version
    info = json.loads(crictl(config, "info"))
    conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert conditions["RuntimeReady"] is True

    assert "Image is up to date for" in crictl(config, "pull", busybox.name)
    images = crictl(config, "images", "--digests")
    repo, tag = busybox.name.rsplit(":", 1)
    (row,) = [line.split() for line in images.splitlines() if line.startswith(repo)]
    assert row[1] == tag
    assert busybox.digest.removeprefix("sha256:").startswith(row[2])
    assert crictl(config, "images", "-q").split() == [busybox.image.config_digest]

    pod_config = write_json(
        tmp_path / "pod.json",
        {
            "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "crictl-pod-uid", "attempt": 1},
            "log_directory": str(tmp_path / "logs"),
            # pid CONTAINER (1), as the kubelet asks: no pause container, which the test daemon does not have
            "linux": {"cgroup_parent": cgroup_parent, "security_context": {"namespace_options": {"pid": 1}}},
        },
    )
    container_config = write_json(
        tmp_path / "container.json",
        {
            "metadata": {"name": "app"},
            "image": {"image": busybox.name},
            "command": ["sh", "-c", "echo hello from crictl; exec sleep 1000"],
            "log_path": "app.log",
        },
    )
    pod_id = crictl(config, "runp", pod_config).strip()
    assert len(pod_id) == 64
    container_id = crictl(config, "create", pod_id, container_config, pod_config).strip()
    assert len(container_id) == 64
    assert crictl(config, "start", container_id).strip() == container_id

    assert crictl(config, "pods", "-q", "--name", "crictl-pod").split() == [pod_id]
    assert crictl(config, "ps", "-q", "--pod", pod_id).split() == [container_id]
    ps = crictl(config, "ps", "-o", "json")
    (listed,) = json.loads(ps)["containers"]
    assert listed["state"] == "CONTAINER_RUNNING"
    assert listed["metadata"]["name"] == "app"
    inspected = json.loads(crictl(config, "inspect", container_id))
    pid = inspected["info"]["pid"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"

    assert crictl(config, "exec", container_id, "cat", "/proc/1/comm").strip() == "sleep"
    assert crictl(config, "exec", "-s", container_id, "sh", "-c", "echo synced").strip() == "synced"
    deadline = time.monotonic() + 10
    while "hello from crictl" not in (logs := crictl(config, "logs", container_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logs == "hello from crictl\n"
    stats = json.loads(crictl(config, "stats", "-o", "json", "--id", container_id))
    (entry,) = stats["stats"]
    assert entry["attributes"]["id"] == container_id
    assert int(entry["memory"]["workingSetBytes"]["value"]) > 0

    assert crictl(config, "stop", "--timeout", "2", container_id).strip() == container_id
    assert json.loads(crictl(config, "inspect", container_id))["status"]["state"] == "CONTAINER_EXITED"
    assert crictl(config, "rm", container_id).strip() == container_id
    assert crictl(config, "ps", "-a", "-q").split() == []
    assert f"Stopped sandbox {pod_id}" in crictl(config, "stopp", pod_id)
    assert f"Removed sandbox {pod_id}" in crictl(config, "rmp", pod_id)
    assert crictl(config, "pods", "-q").split() == []
    assert crictl(config, "rmi", busybox.name).startswith("Deleted:")
    assert crictl(config, "images", "-q").split() == []
