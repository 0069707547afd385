"""A pod's network: what the kubelet's PodSandboxConfig asks of CNI, and NetworkReady.

A pod with its own network namespace is attached with CNI ADD once the namespace is pinned (RunPodSandbox)
and detached with DEL when it stops (StopPodSandbox) and again, idempotently, when it is removed; a
hostNetwork pod skips CNI. From the pod come CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME,
K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID) and the runtimeConfig capabilities: portMappings from the pod's
port mappings that name a hostPort, dns from its DNSConfig, bandwidth from the kubernetes.io/ingress-bandwidth
and egress-bandwidth annotations, and the cgroup path from its cgroup_parent.

A verbose PodSandboxStatus reports whether the pod's network is still as ADD made it (CNI CHECK), but never
waits for a plugin: it gets the last result with its time, and a result older than ``CHECK_MAX_AGE`` starts
a new CHECK in the background for the next caller, one at a time on the node (starting a plugin forks on the
event loop's thread, so a relist of verbose statuses must not start one per pod). A successful ADD counts as
the first result; only a pod attached before a daemon restart waits for its first CHECK.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from moorage.cri import pb
from moorage.errors import InvalidArgument, MoorageError
from moorage.node.cni import Attachment, AttachmentKey, Bandwidth, Cni, DnsConfig, PortMapping

log = structlog.get_logger(__name__)

CHECK_MAX_AGE = 1.0  # seconds: an older CHECK result is renewed in the background when asked for
PROTOCOLS = {pb.Protocol.TCP: "tcp", pb.Protocol.UDP: "udp", pb.Protocol.SCTP: "sctp"}
INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
BURST_BITS = 2**31 - 1  # the kubelet gives no burst; the bandwidth plugin needs one (containerd's choice)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
_MULTIPLIERS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def uses_cni(pod: pb.PodSandboxConfig) -> bool:
    return pod.linux.security_context.namespace_options.network != pb.NamespaceMode.NODE


def attachment(sandbox_id: str, netns: str, pod: pb.PodSandboxConfig) -> Attachment:
    meta = pod.metadata
    ports = tuple(
        PortMapping(
            container_port=p.container_port,
            host_port=p.host_port,
            protocol=PROTOCOLS.get(p.protocol, "tcp"),
            host_ip=p.host_ip,
        )
        for p in pod.port_mappings
        if p.host_port > 0
    )
    dns = pod.dns_config
    return Attachment(
        container_id=sandbox_id,
        netns=netns,
        pod_name=meta.name,
        namespace=meta.namespace,
        pod_uid=meta.uid,
        port_mappings=ports,
        bandwidth=bandwidth(pod.annotations),
        dns=DnsConfig(tuple(dns.servers), tuple(dns.searches), tuple(dns.options)) if dns.servers else None,
        cgroup_path=pod.linux.cgroup_parent,
        annotations=dict(pod.annotations),
    )


def bandwidth(annotations: Mapping[str, str]) -> Bandwidth | None:
    """The bandwidth plugin's limits from the pod's annotations (Kubernetes quantities, bits per second)."""
    ingress, egress = annotations.get(INGRESS_ANNOTATION, ""), annotations.get(EGRESS_ANNOTATION, "")
    if not ingress and not egress:
        return None
    ingress_rate = quantity(ingress, INGRESS_ANNOTATION) if ingress else 0
    egress_rate = quantity(egress, EGRESS_ANNOTATION) if egress else 0
    return Bandwidth(
        ingress_rate=ingress_rate,
        ingress_burst=BURST_BITS if ingress_rate else 0,
        egress_rate=egress_rate,
        egress_burst=BURST_BITS if egress_rate else 0,
    )


def quantity(text: str, field: str) -> int:
    """A Kubernetes quantity such as ``10M`` or ``1Gi`` as an integer."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise InvalidArgument(f"annotation {field}: {text!r} is not a quantity such as 10M or 1Gi")
    value = float(match.group(1)) * _MULTIPLIERS[match.group(2)]
    if value < 1:
        raise InvalidArgument(f"annotation {field}: {text!r} must be at least 1 bit per second")
    return int(value)


@dataclass(frozen=True)
class CheckResult:
    result: str
    """"ok", or the plugin's error."""
    at: int
    """When the CHECK (or the ADD) that found it ended, in ns since the epoch."""


class PodNetwork:
    """Pods on the node's CNI network."""

    def __init__(self, cni: Cni) -> None:
        self.cni = cni
        self._checked: dict[str, CheckResult] = {}
        self._checking: dict[str, asyncio.Task[CheckResult]] = {}

    async def attach(self, sandbox_id: str, netns: str, pod: pb.PodSandboxConfig) -> list[str]:
        """CNI ADD; the pod's IPs, primary first. Nothing is left attached when it fails."""
        result = await self.cni.setup(attachment(sandbox_id, netns, pod))
        self._checked[sandbox_id] = CheckResult("ok", time.time_ns())
        return list(result.pod_ips)

    async def detach(self, sandbox_id: str, netns: str, pod: pb.PodSandboxConfig) -> None:
        """CNI DEL; idempotent, and works once the namespace is gone or the daemon restarted."""
        self._checked.pop(sandbox_id, None)
        task = self._checking.pop(sandbox_id, None)
        if task is not None:
            task.cancel()
        await self.cni.teardown(attachment(sandbox_id, netns, pod))

    async def check(self, sandbox_id: str, netns: str, pod: pb.PodSandboxConfig) -> None:
        """CNI CHECK: is the pod's network still as ADD made it? Raises with the plugin's error if not."""
        await self.cni.check(attachment(sandbox_id, netns, pod))

    async def last_check(self, sandbox_id: str, netns: str, pod: pb.PodSandboxConfig) -> CheckResult:
        """The last CHECK's outcome without waiting for a plugin (but for the first after a restart); one older
        than CHECK_MAX_AGE is renewed in the background."""
        last = self._checked.get(sandbox_id)
        if last is None:
            return await self._start_check(sandbox_id, netns, pod)
        if time.time_ns() - last.at > CHECK_MAX_AGE * 1e9 and not self._checking:
            self._start_check(sandbox_id, netns, pod)
        return last

    def _start_check(self, sandbox_id: str, netns: str, pod: pb.PodSandboxConfig) -> asyncio.Task[CheckResult]:
        task = self._checking.get(sandbox_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._run_check(sandbox_id, netns, pod))
            self._checking[sandbox_id] = task
        return task

    async def _run_check(self, sandbox_id: str, netns: str, pod: pb.PodSandboxConfig) -> CheckResult:
        try:
            await self.check(sandbox_id, netns, pod)
            found = CheckResult("ok", time.time_ns())
        except MoorageError as exc:
            found = CheckResult(exc.message, time.time_ns())
        except Exception as exc:  # a bug: the status still answers, the log has it
            log.error("cni check crashed", sandbox=sandbox_id, exc_info=exc)
            found = CheckResult(f"check failed: {type(exc).__name__}: {exc}", time.time_ns())
        finally:
            if self._checking.get(sandbox_id) is asyncio.current_task():
                del self._checking[sandbox_id]
        self._checked[sandbox_id] = found
        return found

    async def ready(self) -> tuple[bool, str]:
        return await self.cni.status()

    async def collect(self, attached: Iterable[str]) -> None:
        """Release attachments of pods that no longer exist (start-up, after a crash)."""
        await self.cni.gc(AttachmentKey(sandbox_id) for sandbox_id in attached)
