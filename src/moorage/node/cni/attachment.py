"""What the runtime asks of CNI for one pod, and what it gets back (pure: no I/O).

An :class:`Attachment` is one pod sandbox on the node's network through one interface; its
:class:`AttachmentKey` ``(container_id, ifname)`` is what the spec keys plugin state by (with the network
name). The per-pod values a plugin may take from the runtime rather than its config file travel as
``runtimeConfig``, keyed by the capability each plugin declares (see :func:`capability_args`), and the pod's
identity as ``CNI_ARGS`` (see :func:`cni_args`), as the kubelet's conventions for CNI have it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moorage.errors import InvalidArgument
from moorage.node.cni.result import Result

_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_PROTOCOLS = ("tcp", "udp", "sctp")
IFNAME_MAX = 15  # IFNAMSIZ - 1


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int
    protocol: str = "tcp"  # tcp, udp or sctp (any case)
    host_ip: str = ""


@dataclass(frozen=True)
class Bandwidth:
    """Traffic shaping in bits per second; burst in bits. 0 means unlimited."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0


@dataclass(frozen=True)
class DnsConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttachmentKey:
    container_id: str
    ifname: str = "eth0"

    def __str__(self) -> str:
        return f"{self.container_id}/{self.ifname}"


@dataclass(frozen=True)
class Attachment:
    container_id: str  # the pod sandbox id
    netns: str  # path of the pod's net namespace; "" (or a path gone) on teardown once it is destroyed
    pod_name: str = ""
    namespace: str = ""
    pod_uid: str = ""
    ifname: str = "eth0"
    port_mappings: tuple[PortMapping, ...] = ()
    bandwidth: Bandwidth | None = None
    dns: DnsConfig | None = None
    ips: tuple[str, ...] = ()  # requested IPs (the "ips" capability), CIDR or plain
    cgroup_path: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _CONTAINER_ID.match(self.container_id):
            raise InvalidArgument(
                f"CNI container id {self.container_id!r}: must start with a letter or digit and hold only "
                "letters, digits, '_', '.' and '-'"
            )
        name = self.ifname
        if (
            not name
            or name in (".", "..")
            or len(name.encode()) > IFNAME_MAX
            or any(c in name for c in "/:")
            or any(c.isspace() for c in name)
        ):
            raise InvalidArgument(
                f"CNI interface name {name!r}: 1-{IFNAME_MAX} bytes, not '.' or '..', no '/', ':' or whitespace"
            )
        for mapping in self.port_mappings:
            if mapping.protocol.lower() not in _PROTOCOLS:
                raise InvalidArgument(f"port mapping {mapping}: protocol must be one of {', '.join(_PROTOCOLS)}")
            if not 0 < mapping.container_port < 65536 or not 0 <= mapping.host_port < 65536:
                raise InvalidArgument(f"port mapping {mapping}: ports must be within 1-65535")

    @property
    def key(self) -> AttachmentKey:
        return AttachmentKey(self.container_id, self.ifname)


@dataclass(frozen=True)
class AttachResult:
    """What :meth:`Cni.setup` returns: the network, the final (chained) result and the pod's IPs."""

    network: str
    result: Result
    pod_ips: tuple[str, ...]  # primary first
    raw: Mapping[str, Any]  # the final result as the last plugin printed it


def capability_args(att: Attachment) -> dict[str, Any]:
    """Every runtimeConfig value moorage can offer for ``att``, keyed by capability name; a plugin gets only
    those it declares in its ``capabilities`` (see :func:`runtime_config_for`). Empty values are left out."""
    args: dict[str, Any] = {}
    ports = [
        {
            "hostPort": m.host_port,
            "containerPort": m.container_port,
            "protocol": m.protocol.lower(),
            **({"hostIP": m.host_ip} if m.host_ip else {}),
        }
        for m in att.port_mappings
        if m.host_port > 0  # a container port without a host port is no port mapping (as containerd does)
    ]
    if ports:
        args["portMappings"] = ports
    if att.bandwidth is not None and any(
        (att.bandwidth.ingress_rate, att.bandwidth.egress_rate, att.bandwidth.ingress_burst, att.bandwidth.egress_burst)
    ):
        bw = att.bandwidth
        args["bandwidth"] = {
            "ingressRate": bw.ingress_rate,
            "ingressBurst": bw.ingress_burst,
            "egressRate": bw.egress_rate,
            "egressBurst": bw.egress_burst,
        }
    if att.dns is not None and (att.dns.servers or att.dns.searches or att.dns.options):
        args["dns"] = {
            "servers": list(att.dns.servers),
            "searches": list(att.dns.searches),
            "options": list(att.dns.options),
        }
    if att.ips:
        args["ips"] = list(att.ips)
    if att.cgroup_path:
        args["cgroupPath"] = att.cgroup_path
    if att.annotations:
        args["io.kubernetes.cri.pod-annotations"] = dict(att.annotations)
    return args


def runtime_config_for(plugin: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """The ``runtimeConfig`` one plugin gets: the values of ``args`` for the capabilities it declares true."""
    capabilities = plugin.get("capabilities") or {}
    return {name: value for name, value in args.items() if capabilities.get(name) is True}


def cni_args(att: Attachment) -> list[tuple[str, str]]:
    """The ``CNI_ARGS`` pairs for ``att``; ``IgnoreUnknown=1`` first so plugins accept the K8S_* keys."""
    pairs = [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", att.namespace),
        ("K8S_POD_NAME", att.pod_name),
        ("K8S_POD_INFRA_CONTAINER_ID", att.container_id),
        ("K8S_POD_UID", att.pod_uid),
    ]
    for key, value in pairs:
        if any(c in value for c in ";=\0"):
            raise InvalidArgument(f"CNI_ARGS {key}={value!r}: ';', '=' and NUL cannot be passed")
    return pairs


def format_cni_args(pairs: list[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)
