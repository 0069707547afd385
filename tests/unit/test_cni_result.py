"""CNI result normalization for every spec version, pod IP selection, and the pure attachment helpers."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from moorage.errors import InvalidArgument
from moorage.node.cni.attachment import (
    Attachment,
    AttachmentKey,
    Bandwidth,
    DnsConfig,
    PortMapping,
    capability_args,
    cni_args,
    format_cni_args,
    runtime_config_for,
)
from moorage.node.cni.cache import AttachmentCache, CacheEntry
from moorage.node.cni.invoke import cni_env, plugin_stdin
from moorage.node.cni.result import DNS, Interface, InvalidResult, IPConfig, Route, parse_result

NETNS = "/run/moorage/pinns/abc/net"

# What the bridge plugin prints for a dual-stack pod, at each version.
V031: dict[str, Any] = {
    "cniVersion": "0.3.1",
    "interfaces": [
        {"name": "cni0", "mac": "aa:aa:aa:aa:aa:01"},
        {"name": "veth1", "mac": "aa:aa:aa:aa:aa:02"},
        {"name": "eth0", "mac": "aa:aa:aa:aa:aa:03", "sandbox": NETNS},
    ],
    "ips": [
        {"version": "6", "address": "fd00:88::5/64", "gateway": "fd00:88::1", "interface": 2},
        {"version": "4", "address": "10.88.0.5/24", "gateway": "10.88.0.1", "interface": 2},
    ],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:88::1"}],
    "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc.cluster.local"]},
}


def with_version(doc: dict[str, Any], version: str, *, keep_ip_version: bool) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(doc))
    out["cniVersion"] = version
    if not keep_ip_version:
        for ip in out["ips"]:
            del ip["version"]
    return out


@pytest.mark.parametrize(
    "doc",
    [
        V031,
        with_version(V031, "0.3.0", keep_ip_version=True),
        with_version(V031, "0.4.0", keep_ip_version=True),
        with_version(V031, "1.0.0", keep_ip_version=False),
        with_version(V031, "1.1.0", keep_ip_version=False),
    ],
    ids=lambda d: d["cniVersion"],
)
def test_every_version_normalizes_alike(doc: dict[str, Any]) -> None:
    result = parse_result(doc, plugin="bridge")
    assert result.cni_version == doc["cniVersion"]
    assert result.interfaces == (
        Interface("cni0", "aa:aa:aa:aa:aa:01"),
        Interface("veth1", "aa:aa:aa:aa:aa:02"),
        Interface("eth0", "aa:aa:aa:aa:aa:03", NETNS),
    )
    assert result.ips == (
        IPConfig(ipaddress.ip_interface("fd00:88::5/64"), ipaddress.ip_address("fd00:88::1"), 2),
        IPConfig(ipaddress.ip_interface("10.88.0.5/24"), ipaddress.ip_address("10.88.0.1"), 2),
    )
    assert result.routes == (
        Route(ipaddress.ip_network("0.0.0.0/0")),
        Route(ipaddress.ip_network("::/0"), ipaddress.ip_address("fd00:88::1")),
    )
    assert result.dns == DNS(("10.96.0.10",), "cluster.local", ("svc.cluster.local",))
    assert result.pod_ips() == ("10.88.0.5", "fd00:88::5")  # IPv4 is primary, as containerd picks it
    assert [ip.version for ip in result.ips] == [6, 4]


def test_v110_fields() -> None:
    doc = with_version(V031, "1.1.0", keep_ip_version=False)
    doc["interfaces"][2].update(mtu=1450, socketPath="/run/vhost.sock", pciID="0000:00:1f.6")
    doc["routes"] = [
        {"dst": "10.0.0.0/8", "gw": "10.88.0.1", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 0}
    ]
    result = parse_result(doc)
    assert result.interfaces[2] == Interface(
        "eth0", "aa:aa:aa:aa:aa:03", NETNS, 1450, "/run/vhost.sock", "0000:00:1f.6"
    )
    assert result.routes == (
        Route(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_address("10.88.0.1"), 1400, 1360, 10, 100, 0),
    )


def test_legacy_020_result() -> None:
    doc = {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.0.7/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
        "ip6": {"ip": "fd00::7/64"},
        "dns": {"nameservers": ["1.1.1.1"]},
    }
    result = parse_result(doc)
    assert result.pod_ips() == ("10.1.0.7", "fd00::7")
    assert result.ips[0].gateway == ipaddress.ip_address("10.1.0.1")
    assert result.routes == (Route(ipaddress.ip_network("0.0.0.0/0")),)
    assert result.dns.nameservers == ("1.1.1.1",)


def test_ipam_only_result_has_pod_ips() -> None:
    result = parse_result({"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.9/24"}], "dns": {}})
    assert result.interfaces == ()
    assert result.pod_ips("eth0") == ("10.88.0.9",)
    assert result.ips[0].gateway is None


def test_pod_ips_only_from_the_pod_interface() -> None:
    doc = {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0"},
            {"name": "eth0", "sandbox": NETNS},
            {"name": "net1", "sandbox": NETNS},
        ],
        "ips": [
            {"address": "10.88.0.1/24", "interface": 0},  # the bridge's own address: not the pod's
            {"address": "fd00::5/64", "interface": 1},
            {"address": "fd00::6/64", "interface": 1},
            {"address": "10.88.0.5/24", "interface": 1},
            {"address": "10.88.0.5/24", "interface": 1},
            {"address": "192.168.9.9/24", "interface": 2},
        ],
    }
    result = parse_result(doc)
    assert result.pod_ips("eth0") == ("10.88.0.5", "fd00::5", "fd00::6")
    assert result.pod_ips("net1") == ("192.168.9.9",)
    # No IP on the named interface: every sandboxed or unattached address (not the bridge's).
    assert result.pod_ips("eth9") == ("10.88.0.5", "fd00::5", "fd00::6", "192.168.9.9")
    only_v6 = parse_result({"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/64"}, {"address": "fd00::6/64"}]})
    assert only_v6.pod_ips() == ("fd00::5", "fd00::6")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "result must be a JSON object"),
        ({"cniVersion": 1}, "cniVersion must be a string"),
        ({"cniVersion": "1.0.0", "ips": {}}, "ips must be a list"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}, "CIDR form"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}, r"ips\[0\]\.address"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "gateway": "nope"}]}, r"ips\[0\]\.gateway"),
        ({"cniVersion": "0.3.1", "ips": [{"version": "5", "address": "10.0.0.1/24"}]}, "version must be"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": 3}]}, "not an index"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": True}]}, "must be an integer"),
        ({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}, r"interfaces\[0\]\.name"),
        ({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mtu": "1500"}]}, "mtu must be an integer"),
        ({"cniVersion": "1.0.0", "routes": [{"gw": "10.0.0.1"}]}, r"routes\[0\]\.dst"),
        ({"cniVersion": "1.0.0", "routes": [{"dst": "300.0.0.0/8"}]}, r"routes\[0\]\.dst"),
        ({"cniVersion": "1.0.0", "dns": {"nameservers": [1]}}, "dns.nameservers"),
        ({"cniVersion": "1.0.0", "dns": []}, "dns must be a JSON object"),
    ],
)
def test_invalid_results_name_the_plugin(doc: Any, message: str) -> None:
    with pytest.raises(InvalidResult, match=message) as err:
        parse_result(doc, plugin="weird")
    assert "CNI plugin weird" in err.value.message


# --- attachment helpers (pure) --------------------------------------------------------------------------------


def full_attachment() -> Attachment:
    return Attachment(
        container_id="abc123",
        netns=NETNS,
        pod_name="web-0",
        namespace="default",
        pod_uid="1234-5678",
        port_mappings=(
            PortMapping(80, 8080, "TCP"),
            PortMapping(53, 5353, "udp", "127.0.0.1"),
            PortMapping(9090, 0),  # no host port: not a mapping
        ),
        bandwidth=Bandwidth(ingress_rate=1_000_000, ingress_burst=2_000_000),
        dns=DnsConfig(("10.96.0.10",), ("default.svc.cluster.local",), ("ndots:5",)),
        ips=("10.88.0.42",),
        cgroup_path="/kubepods/pod1234",
        annotations={"team": "a"},
    )


def test_capability_args_and_per_plugin_runtime_config() -> None:
    args = capability_args(full_attachment())
    assert args == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ],
        "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 2_000_000, "egressRate": 0, "egressBurst": 0},
        "dns": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"], "options": ["ndots:5"]},
        "ips": ["10.88.0.42"],
        "cgroupPath": "/kubepods/pod1234",
        "io.kubernetes.cri.pod-annotations": {"team": "a"},
    }
    portmap = {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}}
    assert runtime_config_for(portmap, args) == {"portMappings": args["portMappings"]}
    assert runtime_config_for({"type": "bridge"}, args) == {}
    assert capability_args(Attachment("abc", NETNS, bandwidth=Bandwidth(), dns=DnsConfig())) == {}


def test_cni_args() -> None:
    pairs = cni_args(full_attachment())
    assert format_cni_args(pairs) == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
        "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=1234-5678"
    )
    with pytest.raises(InvalidArgument, match="K8S_POD_NAME"):
        cni_args(Attachment("abc", NETNS, pod_name="a;b"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"container_id": ""}, "container id"),
        ({"container_id": "-abc"}, "container id"),
        ({"container_id": "a/b"}, "container id"),
        ({"ifname": ""}, "interface name"),
        ({"ifname": "a" * 16}, "interface name"),
        ({"ifname": "eth 0"}, "interface name"),
        ({"ifname": "eth:0"}, "interface name"),
        ({"ifname": ".."}, "interface name"),
        ({"port_mappings": (PortMapping(80, 8080, "icmp"),)}, "protocol"),
        ({"port_mappings": (PortMapping(0, 8080),)}, "ports must be"),
        ({"port_mappings": (PortMapping(80, 70000),)}, "ports must be"),
    ],
)
def test_bad_attachments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"container_id": "abc", "netns": NETNS, **kwargs}
    with pytest.raises(InvalidArgument, match=message):
        Attachment(**fields)


def test_plugin_stdin_sets_runtime_fields_and_drops_stale_ones() -> None:
    plugin = {"type": "portmap", "capabilities": {"portMappings": True}, "prevResult": {"stale": 1}, "name": "x"}
    stdin = plugin_stdin("podnet", "1.0.0", plugin, runtime_config={}, prev_result=None)
    assert stdin == {"type": "portmap", "capabilities": {"portMappings": True}, "name": "podnet", "cniVersion": "1.0.0"}
    stdin = plugin_stdin("podnet", "1.0.0", plugin, runtime_config={"portMappings": [1]}, prev_result={"ips": []})
    assert stdin["runtimeConfig"] == {"portMappings": [1]}
    assert stdin["prevResult"] == {"ips": []}
    assert plugin["prevResult"] == {"stale": 1}  # the loaded config is not modified


def test_cni_env_per_verb() -> None:
    dirs = [Path("/opt/cni/bin"), Path("/usr/lib/cni")]
    assert cni_env("STATUS", dirs) == {"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}
    env = cni_env("DEL", dirs, container_id="abc", netns="", ifname="eth0", args="IgnoreUnknown=1")
    assert env == {
        "CNI_COMMAND": "DEL",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "CNI_CONTAINERID": "abc",
        "CNI_NETNS": "",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1",
    }


# --- the attachment cache (a temp dir) ------------------------------------------------------------------------


def test_cache_round_trip_and_damage(tmp_path: Path) -> None:
    cache = AttachmentCache(tmp_path / "cache")
    key = AttachmentKey("abc", "eth0")
    config = {"cniVersion": "1.0.0", "name": "podnet", "plugins": [{"type": "bridge"}]}
    entry = CacheEntry("podnet", key, NETNS, "/etc/cni/net.d/10.conflist", config, {"ips": ["10.0.0.1"]}, (("A", "1"),))
    assert cache.load("podnet", key) is None
    assert cache.find(key) == []

    cache.write(entry)
    assert cache.load("podnet", key) == entry
    assert cache.path("podnet", key) == tmp_path / "cache/podnet/abc@eth0.json"
    done = CacheEntry(**{**entry.__dict__, "result": V031})
    cache.write(done)
    assert cache.find(key) == [done]
    assert cache.entries() == [done]
    assert done.network_config().plugin_types == ("bridge",)
    assert [p.name for p in (tmp_path / "cache/podnet").iterdir()] == ["abc@eth0.json"]  # no temp files left

    (tmp_path / "cache/podnet/zzz@eth0.json").write_text("{broken")
    (tmp_path / "cache/other").mkdir()
    (tmp_path / "cache/other/abc@eth0.json").write_text(json.dumps({"version": 1, "network": "other"}))
    assert cache.entries() == [done]  # damaged entries are skipped, not fatal
    cache.remove("podnet", key)
    cache.remove("podnet", key)
    assert cache.find(key) == []
