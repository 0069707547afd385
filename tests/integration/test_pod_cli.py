"""The pod and container commands of the ``moorage`` CLI (crictl run, ps, pods, logs, stop, rm) on a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from moorage.cli.logs import LogEntry, LogParser
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration

CGROUP_ROOT = Path("/sys/fs/cgroup")


@pytest.fixture
def cli_node(node: DaemonProcess, cgroup_parent: str) -> Iterator[DaemonProcess]:
    """The node, with every pod the test left behind removed afterwards (before its cgroup), even on failure."""
    try:
        yield node
    finally:
        node.remove_all_pods()


def moorage(node: DaemonProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "moorage.cli.main", "--endpoint", node.endpoint, "--timeout", "60", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"moorage {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_configs(
    tmp: Path, image: str, cgroup_parent: str, name: str, script: str, *, fmt: str = "json"
) -> tuple[str, str]:
    pod: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "attempt": 0},
        "hostname": f"{name}-host",
        "log_directory": str(tmp / "logs"),
        "labels": {"app": name},
        "linux": {
            "cgroup_parent": cgroup_parent,
            "security_context": {"namespace_options": {"network": "POD", "ipc": "POD", "pid": "CONTAINER"}},
        },
    }
    container = {
        "metadata": {"name": "app"},
        "image": {"image": image},
        "command": ["sh", "-c", script],
        "log_path": "app.log",
        "labels": {"role": "app"},
    }
    pod_file, container_file = tmp / f"{name}-pod.{fmt}", tmp / f"{name}-container.{fmt}"
    dump = json.dumps if fmt == "json" else yaml.safe_dump
    pod_file.write_text(dump(pod))
    container_file.write_text(dump(container))
    return str(container_file), str(pod_file)


def rows(node: DaemonProcess, *args: str) -> list[list[str]]:
    """A table command's rows, split on runs of 2+ spaces (CREATED holds single spaces); header first."""
    lines = moorage(node, *args).stdout.splitlines()
    return [[cell.strip() for cell in line.split("   ") if cell.strip()] for line in lines]


def wait_for(fn: Any, seconds: float = 15) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.mark.parametrize("case", ["runc json", "crun yaml"])
def test_run_ps_pods_logs_inspect_stop_rm(
    cli_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path, case: str
) -> None:
    """The crictl walk-through, with each runtime handler and each config file format."""
    node = cli_node
    handler, fmt = case.split()
    files = write_configs(tmp_path, busybox.name, cgroup_parent, "clipod", "echo hello; sleep 1000", fmt=fmt)
    container_id = moorage(node, "run", "--pull", "--runtime", handler, *files).stdout.strip()
    assert len(container_id) == 64, container_id
    assert (node.state / "runtime" / handler / container_id).is_dir()  # that handler's runtime holds its state
    with node.client() as client:
        (pod,) = client.list_pods()

    table = rows(node, "ps")
    assert table[0] == ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"]
    assert len(table) == 2
    assert table[1][0] == container_id[:13]
    assert table[1][3:] == ["Running", "app", "0", pod.id[:13]]
    assert table[1][2].endswith("ago")
    assert moorage(node, "ps", "-q").stdout.split() == [container_id]
    assert moorage(node, "ps", "-q", "--pod", pod.id[:8], "--label", "role=app", "--name", "^ap").stdout.split() == [
        container_id
    ]
    assert moorage(node, "ps", "-q", "--name", "nomatch").stdout.split() == []

    table = rows(node, "pods")
    assert table[0] == ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]
    assert table[1][0] == pod.id[:13]
    assert table[1][2:] == ["Ready", "clipod", "default", "0", handler]
    assert moorage(node, "pods", "-q", "--state", "ready", "--label", "app=clipod").stdout.split() == [pod.id]
    assert moorage(node, "pods", "-q", "--state", "notready").stdout.split() == []

    assert wait_for(lambda: moorage(node, "logs", container_id[:12]).stdout) == "hello\n"
    inspected = json.loads(moorage(node, "inspect", container_id[:12]).stdout)
    assert inspected["status"]["state"] == "CONTAINER_RUNNING"
    assert inspected["status"]["id"] == container_id
    assert inspected["info"]
    inspected_pod = json.loads(moorage(node, "inspectp", pod.id[:12]).stdout)
    assert inspected_pod["status"]["state"] == "SANDBOX_READY"
    assert inspected_pod["status"]["metadata"]["name"] == "clipod"

    refused = moorage(node, "rm", container_id, check=False)
    assert refused.returncode != 0
    assert "running" in refused.stderr
    assert moorage(node, "stop", "--timeout", "1", container_id[:12]).stdout.strip() == container_id
    assert moorage(node, "ps", "-q").stdout.split() == []
    table = rows(node, "ps", "-a")
    assert table[1][0] == container_id[:13]
    assert table[1][3] == "Exited"
    assert moorage(node, "logs", "-f", container_id).stdout == "hello\n"  # returns: the container exited

    moorage(node, "rm", container_id[:12])
    assert moorage(node, "ps", "-a", "-q").stdout.split() == []
    assert moorage(node, "stopp", pod.id[:12]).stdout.strip() == f"Stopped sandbox {pod.id}"
    assert rows(node, "pods")[1][2] == "NotReady"
    assert moorage(node, "rmp", pod.id[:12]).stdout.strip() == f"Removed sandbox {pod.id}"
    assert moorage(node, "pods", "-q").stdout.split() == []
    assert moorage(node, "ps", "-a", "-q").stdout.split() == []


def test_runp_create_start_follow_logs_and_force_removal(
    cli_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    node = cli_node
    script = "echo out; echo err >&2; sleep 1; printf 'no newline'"
    container_file, pod_file = write_configs(tmp_path, busybox.name, cgroup_parent, "stepwise", script)
    pod_id = moorage(node, "runp", pod_file).stdout.strip()
    container_id = moorage(node, "create", "--pull", pod_id[:10], container_file, pod_file).stdout.strip()
    assert rows(node, "ps", "-a")[1][3] == "Created"
    moorage(node, "start", container_id[:10])
    followed = moorage(node, "logs", "-f", container_id)  # until the container exits
    assert followed.stdout == "out\nno newline"
    assert followed.stderr == "err\n"
    assert moorage(node, "logs", "--tail", "1", container_id).stdout == "no newline"

    refused = moorage(node, "rmp", pod_id, check=False)
    assert refused.returncode != 0
    assert "stop it first" in refused.stderr
    moorage(node, "rmp", "-f", pod_id)
    assert moorage(node, "pods", "-q").stdout.split() == []


def test_errors_name_the_status(cli_node: DaemonProcess, tmp_path: Path) -> None:
    for args in (["inspect", "f" * 12], ["inspectp", "f" * 12], ["logs", "f" * 12], ["stop", "f" * 12]):
        failed = moorage(cli_node, *args, check=False)
        assert failed.returncode != 0
        assert "NOT_FOUND" in failed.stderr, args
    bad = tmp_path / "pod.json"
    bad.write_text('{"metadata": {"nmae": "x"}}')
    failed = moorage(cli_node, "runp", str(bad), check=False)
    assert failed.returncode != 0
    assert str(bad) in failed.stderr
    assert "nmae" in failed.stderr


def test_the_log_parser_joins_partial_lines_per_stream() -> None:
    parser = LogParser()
    data = (
        b"2024-01-01T00:00:00.1Z stdout P hel\n"
        b"2024-01-01T00:00:00.2Z stderr F oops\n"
        b"2024-01-01T00:00:00.3Z stdout F lo world\n"
        b"2024-01-01T00:00:00.4Z stdout F \n"
        b"2024-01-01T00:00:00.5Z stdout P tail"
    )
    assert parser.feed(data[:50]) == []
    assert parser.feed(data[50:]) == [
        LogEntry("2024-01-01T00:00:00.2Z", "stderr", b"oops"),
        LogEntry("2024-01-01T00:00:00.1Z", "stdout", b"hello world"),
        LogEntry("2024-01-01T00:00:00.4Z", "stdout", b""),
    ]
    assert parser.feed(b"\n") == []
    assert parser.flush() == [LogEntry("2024-01-01T00:00:00.5Z", "stdout", b"tail", complete=False)]
