"""The CNI client against the real plugins (Debian's containernetworking-plugins in /usr/lib/cni).

Network safety: every plugin runs inside a "node" net namespace the test made (tests/fixtures/netns.py), so the
bridge, the host ends of the veths, sysctls and iptables rules live there and die with it. Pods are namespaces
the test made too. Traffic goes only to 127.0.0.1 and to addresses of the test's own subnets, inside those
namespaces. host-local leases go to a temp dataDir. Failures are injected with small scripts in a temp bin dir
searched before /usr/lib/cni.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.errors import NotFound
from moorage.node.cni import (
    Attachment,
    AttachmentKey,
    Cni,
    NetworkConfig,
    NetworkNotReady,
    PluginError,
    PluginNotFound,
    PluginTimeout,
    PortMapping,
)
from tests.fixtures.netns import Netns, NodeNetns, netns, node_netns

PLUGINS = Path("/usr/lib/cni")
NETWORK = "moorage-test"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not (PLUGINS / "bridge").exists(), reason="containernetworking-plugins not installed"),
]

FAIL = """#!/bin/sh
echo "$CNI_COMMAND" >> "$0.log"
if [ "$CNI_COMMAND" = ADD ]; then
  echo "fail-plugin: about to fail" >&2
  echo '{"cniVersion": "1.0.0", "code": 11, "msg": "injected failure", "details": "try again"}'
  exit 1
fi
"""
HANG = """#!/bin/sh
echo "$CNI_COMMAND" >> "$0.log"
if [ "$CNI_COMMAND" = ADD ]; then
  sleep 60 &
  echo $! > "$0.pid"
  wait
fi
"""
GARBAGE = """#!/bin/sh
echo "$CNI_COMMAND" >> "$0.log"
if [ "$CNI_COMMAND" = ADD ]; then echo "this is not JSON"; fi
"""
CRASH = """#!/bin/sh
echo "$CNI_COMMAND" >> "$0.log"
if [ "$CNI_COMMAND" = ADD ]; then echo "half a result {" ; echo "panic: boom" >&2; exit 2; fi
"""
STUCK = """#!/bin/sh
echo "$CNI_COMMAND" >> "$0.log"
if [ -e "$0.broken" ]; then echo '{"code": 5, "msg": "stuck"}'; exit 1; fi
"""
# Records its env and stdin; ADD passes prevResult on (or makes up a result, touching nothing); STATUS fails
# while "<script>.down" exists.
RECORDER = f"""#!{sys.executable}
import json, os, sys
conf = json.load(sys.stdin)
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(sys.argv[0] + ".log", "a") as f:
    f.write(json.dumps({{"env": env, "stdin": conf}}) + "\\n")
cmd = env["CNI_COMMAND"]
if cmd == "ADD":
    made_up = {{"cniVersion": conf["cniVersion"], "interfaces": [{{"name": "eth0", "sandbox": env["CNI_NETNS"]}}],
               "ips": [{{"address": "10.88.250.5/24", "interface": 0}}]}}
    json.dump(conf.get("prevResult") or made_up, sys.stdout)
elif cmd == "STATUS" and os.path.exists(sys.argv[0] + ".down"):
    json.dump({{"cniVersion": conf["cniVersion"], "code": 50, "msg": "recorder is down"}}, sys.stdout)
    sys.exit(1)
"""


class Net:
    """One test's node netns, CNI dirs, fake plugins and pods."""

    def __init__(self, tmp: Path, node: NodeNetns, stack: contextlib.ExitStack) -> None:
        self.tmp, self.node, self._stack = tmp, node, stack
        self.conf_dir = tmp / "net.d"
        self.cache_dir = tmp / "cache"
        self.data_dir = tmp / "leases"
        self.fake_bin = tmp / "bin"
        for d in (self.conf_dir, self.fake_bin):
            d.mkdir()
        self.bridge = f"mt-{secrets.token_hex(3)}"
        for name, script in {
            "fail-plugin": FAIL,
            "hang-plugin": HANG,
            "garbage-plugin": GARBAGE,
            "crash-plugin": CRASH,
            "stuck-plugin": STUCK,
            "recorder": RECORDER,
        }.items():
            path = self.fake_bin / name
            path.write_text(script)
            path.chmod(0o755)

    def bridge_plugin(self, *, dual: bool = False, subnet: str = "10.88.7.0/24") -> dict[str, Any]:
        ranges = [[{"subnet": subnet}]] + ([[{"subnet": "fd00:88:7::/64"}]] if dual else [])
        return {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipam": {"type": "host-local", "dataDir": str(self.data_dir), "ranges": ranges},
        }

    def write(self, *plugins: dict[str, Any], version: str = "1.0.0", name: str = "10-test.conflist") -> Path:
        path = self.conf_dir / name
        path.write_text(json.dumps({"cniVersion": version, "name": NETWORK, "plugins": list(plugins)}))
        return path

    def cni(self, timeout: float = 10) -> Cni:
        return Cni(self.conf_dir, [self.fake_bin, PLUGINS], self.cache_dir, timeout)

    def pod(self, name: str) -> Netns:
        return self._stack.enter_context(netns(self.tmp, name))

    def attachment(self, pod: Netns, cid: str, **kwargs: Any) -> Attachment:
        return Attachment(cid, str(pod.path), pod_name=f"pod-{cid}", namespace="test", pod_uid=f"uid-{cid}", **kwargs)

    def leases(self) -> list[str]:
        """IPs host-local holds for the network (files named after the address)."""
        directory = self.data_dir / NETWORK
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit() or ":" in p.name)

    def cached(self) -> list[str]:
        return sorted(p.name for p in self.cache_dir.rglob("*.json")) if self.cache_dir.exists() else []

    def log(self, plugin: str) -> list[str]:
        path = self.fake_bin / f"{plugin}.log"
        return path.read_text().splitlines() if path.exists() else []

    def recorded(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log("recorder")]

    def veths(self) -> list[str]:
        return [name for name in self.node.links() if name.startswith("veth")]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(node_netns(tmp_path))
        n = Net(tmp_path, node, stack)
        yield n
    # Everything the plugins made was in the node netns, now gone; the host never saw the bridge.
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert n.bridge not in host_links
    assert not [p for p in tmp_path.rglob("*") if p.is_mount()]


def serve_once_per_connection(server: socket.socket, reply: bytes) -> threading.Thread:
    def loop() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(reply)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def fetch(host: str, port: int) -> bytes | str:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            return s.recv(64)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_pods_get_ips_and_reach_each_other_then_del_frees_everything(net: Net) -> None:
    net.write(net.bridge_plugin(), {"type": "portmap", "capabilities": {"portMappings": True}})
    cni = net.cni()
    pod_a, pod_b = net.pod("a"), net.pod("b")
    att_a, att_b = net.attachment(pod_a, "aaaa"), net.attachment(pod_b, "bbbb")

    res_a = net.node.run(cni.setup(att_a))
    res_b = net.node.run(cni.setup(att_b))

    assert res_a.network == NETWORK
    assert res_a.result.cni_version == "1.0.0"
    ip_a, ip_b = res_a.pod_ips[0], res_b.pod_ips[0]
    assert ip_a.startswith("10.88.7.")
    assert ip_b.startswith("10.88.7.")
    assert ip_a != ip_b
    assert pod_a.addresses("eth0") == [f"{ip_a}/24"]
    assert net.leases() == sorted([ip_a, ip_b])
    assert net.cached() == ["aaaa@eth0.json", "bbbb@eth0.json"]
    assert net.bridge in net.node.links()
    pod_a.exec("busybox", "ping", "-c", "1", "-W", "3", ip_b)
    pod_b.exec("busybox", "ping", "-c", "1", "-W", "3", ip_a)

    net.node.run(cni.teardown(att_a))
    net.node.run(cni.teardown(att_b))
    assert net.leases() == []
    assert net.cached() == []
    assert net.veths() == []
    assert "eth0" not in pod_a.links()


def test_portmap_host_port_reaches_the_pod(net: Net) -> None:
    net.write(net.bridge_plugin(), {"type": "portmap", "capabilities": {"portMappings": True}})
    cni = net.cni()
    pod = net.pod("web")
    att = net.attachment(pod, "web", port_mappings=(PortMapping(80, 8080), PortMapping(81, 0)))
    server = pod.call(socket.create_server, ("0.0.0.0", 80))
    try:
        serve_once_per_connection(server, b"hello from the pod")
        net.node.run(cni.setup(att))
        assert net.node.call(fetch, "10.88.7.1", 8080) == b"hello from the pod"  # the node's bridge address
        assert net.node.call(fetch, "127.0.0.1", 8080) == b"hello from the pod"
        assert "dport 8080" in net.node.exec("iptables-save", "-t", "nat").stdout

        net.node.run(cni.teardown(att))
        assert "CNI-DN" not in net.node.exec("iptables-save", "-t", "nat").stdout
        assert "Error" in str(net.node.call(fetch, "127.0.0.1", 8080))
    finally:
        server.close()
    assert (
        NETWORK not in subprocess.run(["iptables-save"], check=False, capture_output=True, text=True).stdout
    )  # host untouched


def test_del_is_idempotent_and_needs_neither_netns_nor_cache(net: Net) -> None:
    net.write(net.bridge_plugin(), {"type": "recorder"})
    cni = net.cni()
    never = net.attachment(net.pod("never"), "never")
    net.node.run(cni.teardown(never))  # never set up: fine

    # DEL twice.
    twice = net.attachment(net.pod("twice"), "twice")
    net.node.run(cni.setup(twice))
    net.node.run(cni.teardown(twice))
    net.node.run(cni.teardown(twice))
    assert net.leases() == []

    # The netns is gone before DEL: CNI_NETNS is empty, the lease is still released, by a new daemon instance.
    with netns(net.tmp, "gone") as gone:
        doomed = net.attachment(gone, "gone")
        ip = net.node.run(cni.setup(doomed)).pod_ips[0]
    assert net.leases() == [ip]
    net.node.run(net.cni().teardown(doomed))
    assert net.leases() == []
    dels = [r for r in net.recorded() if r["env"]["CNI_COMMAND"] == "DEL" and r["env"]["CNI_CONTAINERID"] == "gone"]
    assert dels[-1]["env"]["CNI_NETNS"] == ""
    assert dels[-1]["stdin"]["prevResult"]["ips"][0]["address"] == f"{ip}/24"  # the cached ADD result

    # The cache is lost: DEL with the current config, no prevResult.
    lost = net.attachment(net.pod("lost"), "lost")
    net.node.run(cni.setup(lost))
    for entry in net.cache_dir.rglob("*.json"):
        entry.unlink()
    net.node.run(cni.teardown(lost))
    assert net.leases() == []
    assert "prevResult" not in net.recorded()[-1]["stdin"]
    assert net.veths() == []


def test_del_after_restart_uses_the_cached_config(net: Net) -> None:
    net.write(net.bridge_plugin(), {"type": "recorder", "capabilities": {"portMappings": True}})
    att = net.attachment(net.pod("p"), "cached", port_mappings=(PortMapping(80, 8080),))
    net.node.run(net.cni().setup(att))
    (net.conf_dir / "10-test.conflist").unlink()  # the operator removed the network meanwhile

    net.node.run(net.cni().teardown(Attachment("cached", att.netns)))  # a new instance, knowing only the id
    assert net.leases() == []
    add, delete = (r for r in net.recorded() if r["env"]["CNI_CONTAINERID"] == "cached")
    assert delete["env"]["CNI_ARGS"] == add["env"]["CNI_ARGS"]
    assert delete["stdin"]["runtimeConfig"] == add["stdin"]["runtimeConfig"]


def test_plugin_input_follows_the_spec(net: Net) -> None:
    recorder = {"type": "recorder", "capabilities": {"portMappings": True, "bandwidth": True}, "prevResult": "stale"}
    net.write(net.bridge_plugin(), recorder, {"type": "portmap", "capabilities": {"portMappings": True}})
    cni = net.cni()
    pod = net.pod("in")
    att = net.attachment(pod, "input", port_mappings=(PortMapping(80, 8080, "UDP"),), ips=("10.88.7.50",))
    res = net.node.run(cni.setup(att))
    net.node.run(cni.teardown(att))

    add, delete = net.recorded()
    env = add["env"]
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "input"
    assert env["CNI_NETNS"] == str(pod.path)
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_PATH"] == f"{net.fake_bin}:{PLUGINS}"
    assert env["CNI_ARGS"] == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME=pod-input;K8S_POD_INFRA_CONTAINER_ID=input;"
        "K8S_POD_UID=uid-input"
    )
    stdin = add["stdin"]
    assert (stdin["name"], stdin["cniVersion"]) == (NETWORK, "1.0.0")
    assert stdin["runtimeConfig"] == {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]}
    assert stdin["prevResult"]["ips"][0]["address"] == f"{res.pod_ips[0]}/24"  # the bridge's result, chained
    assert delete["env"]["CNI_COMMAND"] == "DEL"
    assert delete["stdin"]["prevResult"] == dict(res.raw)  # DEL gets the final result of the chain


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_spec_versions_work_with_the_real_plugins(net: Net, version: str) -> None:
    net.write(net.bridge_plugin(), {"type": "portmap", "capabilities": {"portMappings": True}}, version=version)
    cni = net.cni()
    att = net.attachment(net.pod("v"), "ver", port_mappings=(PortMapping(80, 8080),))
    res = net.node.run(cni.setup(att))
    assert res.result.cni_version == version
    assert res.pod_ips[0].startswith("10.88.7.")
    assert ("version" in res.raw["ips"][0]) == (version != "1.0.0")
    # No CHECK here: portmap 1.1.1 fails CHECK of single-stack pods (containernetworking/plugins#819).
    net.node.run(cni.teardown(att))
    assert net.leases() == []


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_check_reports_a_broken_pod_network(net: Net, version: str) -> None:
    net.write(net.bridge_plugin(), version=version)
    cni = net.cni()
    pod = net.pod("c")
    att = net.attachment(pod, "chk")
    with pytest.raises(NotFound):
        net.node.run(cni.check(att))  # never set up
    net.node.run(cni.setup(att))
    net.node.run(cni.check(att))
    pod.exec("ip", "addr", "flush", "dev", "eth0")
    if version == "0.3.1":
        net.node.run(cni.check(att))  # 0.3.x has no CHECK verb: nothing is run
    else:
        with pytest.raises(PluginError, match=r"CNI plugin bridge .* CHECK failed"):
            net.node.run(cni.check(att))
    net.node.run(cni.teardown(att))


def test_dual_stack(net: Net) -> None:
    net.write(net.bridge_plugin(dual=True))
    cni = net.cni()
    pod = net.pod("dual")
    att = net.attachment(pod, "dual")
    res = net.node.run(cni.setup(att))
    v4, v6 = res.pod_ips
    assert v4.startswith("10.88.7.")
    assert v6.startswith("fd00:88:7::")
    assert {ip.version for ip in res.result.ips} == {4, 6}
    assert sorted(pod.addresses("eth0")) == sorted([f"{v4}/24", f"{v6}/64"])
    net.node.run(cni.teardown(att))
    assert net.leases() == []


@pytest.mark.parametrize(
    ("plugin", "error", "message"),
    [
        (
            "fail-plugin",
            PluginError,
            r"fail-plugin .* ADD failed: injected failure: try again \(code 11.*about to fail",
        ),
        ("hang-plugin", PluginTimeout, r"hang-plugin .* ADD did not finish within 1s"),
        ("garbage-plugin", PluginError, r"garbage-plugin .* ADD printed output that is not a CNI result"),
        ("crash-plugin", PluginError, r"crash-plugin .* ADD failed with exit status 2; stdout: .*stderr: panic: boom"),
    ],
)
def test_failed_add_names_the_plugin_and_releases_the_lease(
    net: Net, plugin: str, error: type[Exception], message: str
) -> None:
    net.write(net.bridge_plugin(), {"type": plugin})
    cni = net.cni(timeout=1)
    pod = net.pod("f")
    started = time.monotonic()
    with pytest.raises(error, match=message):
        net.node.run(cni.setup(net.attachment(pod, "fail")))
    assert time.monotonic() - started < 8
    assert net.leases() == []  # the bridge's lease was released by the rollback
    assert net.cached() == []
    assert net.veths() == []
    assert "eth0" not in pod.links()
    assert net.log(plugin) == ["ADD", "DEL"]  # the failing plugin gets its DEL too: it may have done part of ADD
    if plugin == "hang-plugin":
        pid = int((net.fake_bin / "hang-plugin.pid").read_text())
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_failed_rollback_is_reported_and_left_for_teardown(net: Net) -> None:
    net.write(net.bridge_plugin(), {"type": "stuck-plugin"})
    (net.fake_bin / "stuck-plugin.broken").touch()
    cni = net.cni()
    att = net.attachment(net.pod("s"), "stuck")
    failure = r"stuck-plugin .* ADD failed: stuck .*rollback failed too: .* DEL failed: stuck"
    with pytest.raises(PluginError, match=failure):
        net.node.run(cni.setup(att))
    assert net.leases() == []  # every plugin gets its DEL, even after one failed
    assert net.cached() == ["stuck@eth0.json"]  # kept, so a later teardown or GC finishes the job

    (net.fake_bin / "stuck-plugin.broken").unlink()
    net.node.run(cni.teardown(att))
    assert net.cached() == []
    assert net.log("stuck-plugin") == ["ADD", "DEL", "DEL"]


def test_missing_plugin_fails_before_anything_is_done(net: Net) -> None:
    net.write(net.bridge_plugin(), {"type": "no-such-plugin"})
    with pytest.raises(PluginNotFound, match=f"no-such-plugin .*not found in {net.fake_bin}, {PLUGINS}"):
        net.node.run(net.cni().setup(net.attachment(net.pod("m"), "missing")))
    assert net.leases() == []
    assert net.cached() == []
    assert net.veths() == []


def test_status_and_config_change_detection(net: Net) -> None:
    cni = net.cni()
    ready, reason = net.node.run(cni.status())
    assert not ready
    assert f"no CNI network config (*.conflist, *.conf, *.json) in {net.conf_dir}" in reason
    with pytest.raises(NetworkNotReady):
        net.node.run(cni.setup(net.attachment(net.pod("s"), "early")))

    changes: list[tuple[NetworkConfig | None, str]] = []
    watcher = net.node.start(cni.watch(interval=0.05, on_change=lambda n, e: changes.append((n, e))))
    try:
        wait_for(lambda: bool(changes))
        broken = net.conf_dir / "05-broken.conf"
        broken.write_text("{")
        ready, reason = net.node.run(cni.status())
        assert not ready
        assert f"{broken}: not valid JSON" in reason

        broken.unlink()
        net.write(net.bridge_plugin(), {"type": "no-such-plugin"})
        ready, reason = net.node.run(cni.status())
        assert not ready
        assert "CNI plugin no-such-plugin of network" in reason

        net.write(net.bridge_plugin())  # fixed in place: picked up without a restart
        assert net.node.run(cni.status()) == (True, "")
        # The watcher saw the final file (it may or may not have seen the states in between).
        wait_for(lambda: (final := changes[-1][0]) is not None and final.plugin_types == ("bridge",))
    finally:
        watcher.cancel()
    assert changes[0] == (None, "")
    assert changes[-1][1] == ""


def test_status_and_gc_verbs_of_a_v110_network(net: Net) -> None:
    net.write({"type": "recorder"}, version="1.1.0")
    cni = net.cni()
    assert net.node.run(cni.status()) == (True, "")
    (net.fake_bin / "recorder.down").touch()
    ready, reason = net.node.run(cni.status())
    assert not ready
    assert "CNI plugin recorder" in reason
    assert "STATUS failed: recorder is down (code 50, plugin not available" in reason
    (net.fake_bin / "recorder.down").unlink()

    keep = net.attachment(net.pod("k"), "keep")
    res = net.node.run(cni.setup(keep))
    assert res.pod_ips == ("10.88.250.5",)
    net.node.run(cni.gc([keep.key, AttachmentKey("other", "net1")]))
    gc = [r for r in net.recorded() if r["env"]["CNI_COMMAND"] == "GC"]
    assert len(gc) == 1
    assert set(gc[0]["env"]) == {"CNI_COMMAND", "CNI_PATH"}
    expected = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "other", "ifname": "net1"}]
    assert gc[0]["stdin"]["cni.dev/valid-attachments"] == expected
    assert net.cached() == ["keep@eth0.json"]


def test_gc_deletes_cached_attachments_no_longer_valid(net: Net) -> None:
    net.write(net.bridge_plugin())
    cni = net.cni()
    keep = net.attachment(net.pod("keep"), "keep")
    stale = net.attachment(net.pod("stale"), "stale")
    kept_ip = net.node.run(cni.setup(keep)).pod_ips[0]
    net.node.run(cni.setup(stale))
    assert len(net.leases()) == 2

    net.node.run(net.cni().gc([keep.key]))  # e.g. after a restart, with the pods the store still knows
    assert net.leases() == [kept_ip]
    assert net.cached() == ["keep@eth0.json"]
    assert len(net.veths()) == 1
    net.node.run(cni.teardown(keep))
    assert net.leases() == []
