"""Pods on a CNI network through the real daemon: RunPodSandbox attaches, StopPodSandbox detaches, the pod IP in
PodSandboxStatus, hostPorts, restarts, and plugins that fail.

Network safety: the daemon under test runs inside a "node" net namespace the test made (tests/fixtures/netns.py),
so the bridge, veths and iptables rules the plugins make live there and die with it. Traffic goes only to the
pods' addresses on the test's own subnet and to the node namespace's bridge address. The test registry is on the
host's loopback, which the node namespace cannot reach, so the image is imported from an archive instead.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures import images as fixtures
from tests.fixtures.errors import rpc_error
from tests.fixtures.netns import NodeNetns, node_netns
from tests.fixtures.pods import pod_config
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration

NETWORK = "moorage-test-pods"
SUBNET = "10.88.9"
PLUGINS = "/usr/lib/cni"
IMAGE = "moorage.test/busybox:1"
FAILING = {
    "fail": "#!/bin/sh\ncat >/dev/null\n"
    'echo \'{"cniVersion": "1.0.0", "code": 11, "msg": "the test plugin refuses", "details": "on purpose"}\'\nexit 1\n',
    "garbage": "#!/bin/sh\ncat >/dev/null\necho 'this is not json'\n",
    "hang": "#!/bin/sh\nexec sleep 600\n",
}


class NetNode:
    def __init__(self, daemon: DaemonProcess, ns: NodeNetns, tmp: Path, cgroup_parent: str) -> None:
        self.daemon, self.ns, self.tmp = daemon, ns, tmp
        self.cgroup_parent = cgroup_parent  # else containers would go to the runtime's default /moorage
        self.leases_dir = tmp / "leases"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name, script in FAILING.items():
            (self.bin / name).write_text(script)
            (self.bin / name).chmod(0o755)

    def write_network(
        self,
        *extra: dict[str, Any],
        name: str = "50-pods.conflist",
        subnet: str = f"{SUBNET}.0/24",
        portmap: bool = True,
        subnet6: str = "",
    ) -> Path:
        bridge = {
            "type": "bridge",
            "bridge": "mtpods0",
            "isGateway": True,
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.leases_dir),
                "ranges": [[{"subnet": subnet}]] + ([[{"subnet": subnet6}]] if subnet6 else []),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
        mapper = {"type": "portmap", "capabilities": {"portMappings": True}}
        path = self.daemon.cni_dir / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            json.dumps(
                {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [bridge, *([mapper] if portmap else []), *extra]}
            )
        )
        return path

    def leases(self) -> list[str]:
        directory = self.leases_dir / NETWORK
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit() or ":" in p.name)

    def veths(self) -> list[str]:
        return [name for name in self.ns.links() if name.startswith("veth")]

    def run_pod(self, name: str, **extra: Any) -> str:
        config = pod_config(name, cgroup_parent=self.cgroup_parent, **extra)
        config.log_directory = str(self.tmp / "logs" / name)
        with self.daemon.client() as client:
            return client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id

    def ip(self, pod_id: str) -> str:
        with self.daemon.client() as client:
            return client.pod_status(pod_id).status.network.ip

    def pod_netns(self, pod_id: str) -> Path:
        return self.daemon.state / "pods" / pod_id / "ns" / "net"

    def in_pod(self, pod_id: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={self.pod_netns(pod_id)}", *argv],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    def container(self, pod_id: str, name: str, *command: str) -> str:
        with self.daemon.client() as client:
            sandbox = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
            meta = client.runtime.PodSandboxStatus(sandbox).status.metadata
            config = pod_config(meta.name, cgroup_parent=self.cgroup_parent)
            config.log_directory = str(self.tmp / "logs" / meta.name)
            container = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name=name),
                image=pb.ImageSpec(image=IMAGE),
                command=list(command),
                log_path=f"{name}.log",
            )
            request = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=container, sandbox_config=config)
            container_id = client.runtime.CreateContainer(request, timeout=30).container_id
            client.start_container(container_id)
            return container_id


@pytest.fixture(scope="module")
def archive(registry: Registry, busybox: PushedImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "busybox.tar"
    fixtures.skopeo_copy(f"docker://{busybox.name}", f"docker-archive:{path}:{IMAGE}")
    return path


@pytest.fixture
def net(archive: Path, tmp_path: Path, cgroup_parent: str) -> Iterator[NetNode]:
    with node_netns(tmp_path) as ns:
        daemon = DaemonProcess()
        node = NetNode(daemon, ns, tmp_path, cgroup_parent)
        try:
            daemon.netns = ns.path
            _write_cni_section(daemon, node.bin)
            node.write_network()
            daemon.start()
            with daemon.client() as client:
                client.import_archive(str(archive), timeout=60)
            yield node
            daemon.remove_all_pods()
            assert node.leases() == []
            assert node.veths() == []
        finally:
            daemon.cleanup()
    assert "mtpods0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def _write_cni_section(daemon: DaemonProcess, fake_bin: Path) -> None:
    """The daemon's config with the test's plugin dirs (fake plugins first) and a short plugin timeout."""
    text = daemon.config_path.read_text()
    text = text.replace("[cni]\n", f'[cni]\nbin_dirs = ["{fake_bin}", "{PLUGINS}"]\nplugin_timeout = 3\n')
    daemon.config_path.write_text(text)


def test_pods_get_ips_reach_each_other_and_release_them(net: NetNode) -> None:
    with net.daemon.client() as client:
        ready = {c.type: c for c in client.status().status.conditions}["NetworkReady"]
    assert ready.status, ready.message
    first, second = net.run_pod("first"), net.run_pod("second")
    ip1, ip2 = net.ip(first), net.ip(second)
    assert ip1.startswith(f"{SUBNET}.")
    assert ip2.startswith(f"{SUBNET}.")
    assert ip1 != ip2
    assert net.leases() == sorted([ip1, ip2])
    assert net.in_pod(first, "busybox", "ping", "-c", "1", "-W", "3", ip2).returncode == 0
    assert net.in_pod(second, "busybox", "ping", "-c", "1", "-W", "3", ip1).returncode == 0

    # A container of the pod has the pod's address on eth0, and lo up.
    container_id = net.container(first, "shell", "sleep", "600")
    with net.daemon.client() as client:
        out = client.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=["busybox", "ip", "-o", "addr"])
        )
    assert f"eth0    inet {ip1}/24" in out.stdout.decode()
    assert "lo    inet 127.0.0.1/8" in out.stdout.decode()

    with net.daemon.client() as client:
        client.timeout = 60
        client.stop_pod(first)
        assert net.leases() == [ip2]  # StopPodSandbox ran DEL: the IP is free again
        client.stop_pod(first)  # again: nothing more to do
        client.remove_pod(first)
    assert net.leases() == [ip2]
    assert len(net.veths()) == 1


def test_pod_traffic_shows_in_stats_and_metrics(net: NetNode) -> None:
    """PodSandboxStats and ListPodSandboxMetrics count the pod's eth0 as the kernel does inside its namespace."""
    first, second = net.run_pod("first"), net.run_pod("second")
    ping = net.in_pod(first, "busybox", "ping", "-c", "3", "-s", "1000", "-W", "3", net.ip(second))
    assert ping.returncode == 0, ping.stderr
    with net.daemon.client() as client:
        stats = client.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=second), timeout=30).stats
        metrics = client.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
    kernel = {
        line.split(":")[0].strip(): line.split(":")[1].split()
        for line in net.in_pod(second, "cat", "/proc/net/dev").stdout.splitlines()[2:]
    }
    eth0 = stats.linux.network.default_interface
    assert eth0.name == "eth0"
    assert 3 * 1000 <= eth0.rx_bytes.value <= int(kernel["eth0"][0])
    assert 3 * 1000 <= eth0.tx_bytes.value <= int(kernel["eth0"][8])
    assert [i.name for i in stats.linux.network.interfaces] == []  # lo is left out, as the kubelet does
    [pod] = [m for m in metrics if m.pod_sandbox_id == second]
    received = {m.name: m for m in pod.metrics}["container_network_receive_bytes_total"]
    assert list(received.label_values) == ["second", "default", "", second, "", "eth0"]
    assert eth0.rx_bytes.value <= received.value.value <= int(kernel["eth0"][0])


def test_a_host_port_reaches_the_container(net: NetNode) -> None:
    mapping = pb.PortMapping(protocol=pb.Protocol.TCP, container_port=8080, host_port=18080)
    pod_id = net.run_pod("web")
    with net.daemon.client() as client:  # a second pod, with the port mapping
        config = pod_config("mapped", cgroup_parent=net.cgroup_parent)
        config.port_mappings.append(mapping)
        config.log_directory = str(net.tmp / "logs" / "mapped")
        mapped = client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    script = "mkdir -p /tmp/www && echo hello-from-the-pod > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
    net.container(mapped, "server", "sh", "-c", script)
    # From the node, on the node's bridge address and the hostPort.
    get = "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 " + f"{SUBNET}.1 18080"
    reply = ""
    for _ in range(50):
        reply = net.ns.exec("sh", "-c", get, check=False).stdout
        if "hello-from-the-pod" in reply:
            break
        time.sleep(0.1)
    assert "hello-from-the-pod" in reply
    assert "dport 18080" in net.ns.exec("iptables-save", "-t", "nat").stdout
    with net.daemon.client() as client:
        client.timeout = 60
        client.stop_pod(mapped)
    assert "dport 18080" not in net.ns.exec("iptables-save", "-t", "nat").stdout
    assert net.ip(pod_id)


def test_a_restarted_daemon_still_releases_the_ip(net: NetNode) -> None:
    pod_id = net.run_pod("survivor")
    ip = net.ip(pod_id)
    net.daemon.stop(signal.SIGKILL)
    net.daemon.start()
    assert net.ip(pod_id) == ip
    assert f"inet {ip}/24" in net.in_pod(pod_id, "ip", "-o", "-4", "addr", "show", "eth0").stdout
    with net.daemon.client() as client:
        client.timeout = 60
        client.stop_pod(pod_id)
    assert net.leases() == []  # DEL from the cached ADD result


def test_host_network_pods_skip_cni(net: NetNode) -> None:
    pod_id = net.run_pod("hostnet", host_network=True)
    assert net.ip(pod_id) == ""
    assert net.leases() == []


@pytest.mark.parametrize("plugin", [*FAILING, "missing"])
def test_a_failing_plugin_fails_the_pod_and_leaves_nothing(net: NetNode, plugin: str) -> None:
    good = net.run_pod("good")
    good_ip = net.ip(good)
    net.write_network({"type": plugin}, name="10-broken.conflist")  # sorts first: it is the network now
    err = rpc_error(lambda: net.run_pod("doomed"))
    expected = {
        "fail": "the test plugin refuses",
        "garbage": "this is not json",
        "hang": "3",  # the timeout, in seconds
        "missing": "missing",
    }[plugin]
    assert err.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED), err  # fmt: skip
    assert plugin in err.details
    assert expected in err.details
    with net.daemon.client() as client:
        assert [p.id for p in client.list_pods()] == [good]
    assert net.leases() == [good_ip]  # the bridge plugin's lease for the doomed pod was released
    assert len(net.veths()) == 1
    assert sorted(p.name for p in (net.daemon.state / "pods").iterdir()) == [good]
    assert net.in_pod(good, "busybox", "ping", "-c", "1", "-W", "3", f"{SUBNET}.1").returncode == 0
    (net.daemon.cni_dir / "10-broken.conflist").unlink()


def test_the_kubelets_pod_cidr_fills_use_pod_cidr(net: NetNode) -> None:
    net.write_network(subnet="usePodCidr", name="20-podcidr.conflist")
    with net.daemon.client() as client:
        ready = {c.type: c for c in client.status().status.conditions}["NetworkReady"]
        assert not ready.status
        assert "no IPv4 pod CIDR yet" in ready.message
        client.update_pod_cidr("10.88.11.0/24")
        ready = {c.type: c for c in client.status().status.conditions}["NetworkReady"]
        assert ready.status, ready.message
    pod_id = net.run_pod("cidr")
    assert net.ip(pod_id).startswith("10.88.11.")
    (net.daemon.cni_dir / "20-podcidr.conflist").unlink()


def test_verbose_status_runs_cni_check(net: NetNode) -> None:
    # portmap 1.1.1 fails CHECK of every single-stack pod (containernetworking/plugins#819): bridge alone here.
    net.write_network(name="20-bridge.conflist", portmap=False)
    pod_id = net.run_pod("checked")

    def check() -> tuple[str, int]:
        with net.daemon.client() as client:
            info = json.loads(client.pod_status(pod_id, verbose=True).info["info"])
        return str(info["networkCheck"]), int(info["networkCheckedAt"])

    result, at = check()
    assert result == "ok"
    assert at <= time.time_ns()
    assert net.in_pod(pod_id, "ip", "link", "del", "eth0").returncode == 0  # break the pod's network
    broken_at = time.time_ns()
    # The status answers the last CHECK's outcome at once and renews an older one in the background.
    deadline = time.monotonic() + 15
    while (found := check())[1] < broken_at and time.monotonic() < deadline:
        time.sleep(0.2)
    result, at = found
    assert at >= broken_at, "no CNI CHECK ran after the network broke"
    assert "CNI plugin bridge" in result
    assert "eth0" in result
    (net.daemon.cni_dir / "20-bridge.conflist").unlink()


def test_a_dual_stack_pod_reports_both_addresses(net: NetNode) -> None:
    net.write_network(name="20-dual.conflist", subnet6="fd00:88:9::/64")
    pod_id = net.run_pod("dual")
    with net.daemon.client() as client:
        status = client.pod_status(pod_id).status.network
    assert status.ip.startswith(f"{SUBNET}.")  # IPv4 first, as the kubelet expects
    assert [ip.ip for ip in status.additional_ips] == [next(a for a in net.leases() if ":" in a)]
    assert status.additional_ips[0].ip.startswith("fd00:88:9::")
    (net.daemon.cni_dir / "20-dual.conflist").unlink()
