"""The daemon as a node sees it: its socket, its signals, its restarts, its config."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.integration.daemon import DaemonProcess

pytestmark = pytest.mark.integration


def moorage(*args: str, endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "moorage.cli.main"]
    if endpoint:
        argv += ["--endpoint", endpoint]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version_through_the_client_and_the_cli(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        v = client.version()
    assert (v.runtime_name, v.runtime_api_version, v.version) == ("moorage", "v1", "0.1.0")
    out = moorage("version", endpoint=daemon.endpoint)
    assert out.returncode == 0, out.stderr
    assert "RuntimeName:  moorage" in out.stdout
    assert "RuntimeApiVersion:  v1" in out.stdout


def test_info_shows_runtime_ready_and_the_cgroup_driver(daemon: DaemonProcess) -> None:
    out = moorage("info", endpoint=daemon.endpoint)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    conditions = {c["type"]: c for c in info["status"]["conditions"]}
    assert conditions["RuntimeReady"]["status"] is True
    assert conditions["NetworkReady"]["status"] is False
    assert info["cgroupDriver"] == "CGROUPFS"
    assert info["config"]["root"] == str(daemon.root)
    assert {h.get("name", "") for h in info["runtimeHandlers"]} == {"", "runc", "crun"}


def test_socket_mode_and_parent_directory(daemon: DaemonProcess) -> None:
    st = daemon.socket.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert daemon.root.is_dir()
    assert stat.S_IMODE(daemon.root.stat().st_mode) == 0o700


def test_network_ready_follows_the_cni_config_dir_without_restart(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        net = {c.type: c for c in client.status().status.conditions}["NetworkReady"]
        assert not net.status
        assert net.reason == "NetworkPluginNotReady"
        assert str(daemon.cni_dir) in net.message
        daemon.cni_dir.mkdir()
        (daemon.cni_dir / "10-test.conflist").write_text('{"cniVersion": "1.0.0", "name": "t", "plugins": []}')
        net = {c.type: c for c in client.status().status.conditions}["NetworkReady"]
        assert not net.status
        assert "10-test.conflist" in net.message  # a broken config is named
        daemon.loopback_network()
        (daemon.cni_dir / "10-test.conflist").unlink()
        net = {c.type: c for c in client.status().status.conditions}["NetworkReady"]
        assert net.status, net.message


def test_runtime_not_ready_names_the_missing_binary(unstarted: DaemonProcess) -> None:
    unstarted.write_config(
        '[runtime.handlers.runc]\npath = "/nonexistent/runc"\n[runtime.handlers.crun]\npath="crun"\n'
    )
    unstarted.start()
    with unstarted.client() as client:
        rt = {c.type: c for c in client.status().status.conditions}["RuntimeReady"]
    assert not rt.status
    assert rt.reason == "RuntimeBinaryMissing"
    assert "/nonexistent/runc (runtime.handlers.runc.path)" in rt.message


def test_the_systemd_driver_is_refused_where_systemd_is_not_running(unstarted: DaemonProcess) -> None:
    """PID 1 here is not systemd; the VM target (`make test-cgroupv2`) runs the systemd driver for real."""
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs on this node")
    unstarted.write_config('cgroup_driver = "systemd"\n')
    bad = subprocess.run(unstarted.serve_argv(), capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode != 0
    assert "cgroup_driver = systemd, but systemd is not running on this node" in bad.stderr
    assert not unstarted.socket.exists()


def pod_cidr(d: DaemonProcess) -> str:
    with d.client() as client:
        return client.status(verbose=True).info["podCIDR"]


def test_pod_cidr_survives_sighup_restart_and_sigkill(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        client.update_pod_cidr("10.88.0.0/16,fd00:88::/64")
    assert pod_cidr(daemon) == '["10.88.0.0/16", "fd00:88::/64"]'

    daemon.send(signal.SIGHUP)
    time.sleep(0.3)
    assert pod_cidr(daemon) == '["10.88.0.0/16", "fd00:88::/64"]'

    assert daemon.stop(signal.SIGTERM) == 0
    daemon.write_config('log.level = "debug"\n')  # a config change across the restart
    daemon.start()
    assert pod_cidr(daemon) == '["10.88.0.0/16", "fd00:88::/64"]'
    with daemon.client() as client:
        client.update_pod_cidr("10.89.0.0/16")

    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert daemon.socket.exists()  # a crashed daemon leaves its socket: the next start must replace it
    daemon.start()
    assert pod_cidr(daemon) == '["10.89.0.0/16"]'


def test_a_bad_pod_cidr_is_invalid_argument_and_changes_nothing(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        client.update_pod_cidr("10.88.0.0/16")
        with pytest.raises(grpc.RpcError) as err:
            client.update_pod_cidr("10.88.0.1/16")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pod_cidr" in str(err.value.details())
    assert pod_cidr(daemon) == '["10.88.0.0/16"]'


def test_sigterm_stops_cleanly_and_removes_the_socket(daemon: DaemonProcess) -> None:
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket.exists()
    assert "stopped" in daemon.log()


def test_a_live_socket_is_refused(daemon: DaemonProcess) -> None:
    other_root = daemon.dir / "other-root"
    out = subprocess.run(daemon.serve_argv(root=other_root), capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0
    assert f"another process is already serving on {daemon.socket}" in out.stderr
    with daemon.client() as client:  # the first daemon is untouched
        assert client.version().runtime_name == "moorage"


def test_a_root_in_use_is_refused(daemon: DaemonProcess) -> None:
    out = subprocess.run(
        daemon.serve_argv(socket=daemon.dir / "second.sock"), capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode != 0
    assert f"root {daemon.root} is in use by another moorage daemon (pid {daemon.proc.pid if daemon.proc else 0})" in (
        out.stderr
    )


def test_a_path_that_is_not_a_socket_is_refused(unstarted: DaemonProcess) -> None:
    unstarted.socket.parent.mkdir(parents=True)
    unstarted.socket.write_text("not a socket")
    out = subprocess.run(unstarted.serve_argv(), capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0
    assert "exists and is not a socket" in out.stderr
    assert unstarted.socket.read_text() == "not a socket"


def test_sighup_with_a_broken_config_keeps_serving(daemon: DaemonProcess) -> None:
    daemon.write_config("[log]\nlevel = 'loud'\n")
    daemon.send(signal.SIGHUP)
    assert "log.level: must be one of" in wait_for_log(daemon, "config reload refused")
    with daemon.client() as client:
        assert client.version().runtime_name == "moorage"


def wait_for_log(d: DaemonProcess, text: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in d.log().splitlines():
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{d.log()}")


def test_sighup_applies_the_log_level_and_names_what_needs_a_restart(unstarted: DaemonProcess) -> None:
    unstarted.log_level = None
    unstarted.write_config("[log]\nlevel = 'info'\n")
    unstarted.start()
    with unstarted.client() as client:
        client.version()
    assert "rpc done" not in unstarted.log()  # a debug line

    unstarted.write_config("sandbox_image = 'example.org/pause:1'\n[log]\nlevel = 'debug'\n")
    unstarted.send(signal.SIGHUP)
    line = wait_for_log(unstarted, "config reloaded")
    assert "applied=['log.level']" in line
    assert "need_restart=['sandbox_image']" in line
    with unstarted.client() as client:
        client.version()
    wait_for_log(unstarted, "rpc done")


def test_bad_config_stops_the_daemon_from_starting(unstarted: DaemonProcess) -> None:
    unstarted.config_path.write_text("[cni]\nbin_dirs = 'x'\n")
    out = subprocess.run(unstarted.serve_argv(), capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0
    assert f"{unstarted.config_path}: cni.bin_dirs: expected a list of strings" in out.stderr
    assert not unstarted.socket.exists()


def test_config_default_and_check_commands(unstarted: DaemonProcess) -> None:
    default = moorage("config", "default")
    assert default.returncode == 0
    unstarted.config_path.write_text(default.stdout)
    ok = moorage("config", "check", str(unstarted.config_path))
    assert ok.returncode == 0
    assert ok.stdout.strip() == f"{unstarted.config_path}: ok"
    unstarted.config_path.write_text("cgroup_driver = 'cgroupsv3'\n")
    bad = moorage("config", "check", str(unstarted.config_path))
    assert bad.returncode != 0
    assert "cgroup_driver: must be one of cgroupfs, systemd" in bad.stderr


def test_metrics_count_rpcs(unstarted: DaemonProcess) -> None:
    port = free_port()
    unstarted.write_config(f'[metrics]\naddress = "127.0.0.1:{port}"\n')
    unstarted.start()
    with unstarted.client() as client:
        client.version()
        with pytest.raises(grpc.RpcError):
            client.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="nope"), timeout=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'moorage_grpc_requests_total{code="OK",method="Version"}' in body
    assert 'moorage_grpc_requests_total{code="NOT_FOUND",method="PodSandboxStatus"}' in body


def test_client_reports_a_daemon_that_is_not_there(unstarted: DaemonProcess) -> None:
    out = moorage("--timeout", "2", "version", endpoint=unstarted.endpoint)
    assert out.returncode != 0
    assert "UNAVAILABLE" in out.stderr
    assert os.path.exists(unstarted.dir)
