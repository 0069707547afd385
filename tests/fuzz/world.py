"""What the fuzz knows of the daemon under test: the objects it holds (to send their real ids), valid requests
to mutate, and the limits that keep every request inside the test's own temp dir, cgroup and net namespace.

:class:`World` follows the daemon's pods, containers and images through List calls after every request, and
remembers the ids of objects removed since, so requests name real existing and just-removed objects as well
as made-up ones: the deep code paths (stop, exec, update, stats of a real container) are reached, not only
the "not found" branch. :func:`confine` rewrites the few fields that reach the host outside what the daemon
owns (a pod's cgroup parent and log directory, a mount's or device's host path) to values under the test's
own paths, keeping the hostile forms (``..``, relative paths, NUL bytes) that must be refused.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from moorage.cli.client import CriClient
from moorage.cri import pb
from tests.fuzz.messages import Overrides, text

SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
"""A container command that exits on SIGTERM within a second (a shell as PID 1 ignores it without a trap)."""


@dataclass
class Paths:
    """The test's own places: everything the fuzz may name on the host is under them."""

    tmp: Path  # host paths for mounts, log directories, seccomp profiles
    cgroup_parent: str  # every pod's cgroup parent is this or under it
    image: str  # the pushed busybox image's name
    registry: str  # host:port of the registry in the test's net namespace

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"


@dataclass
class World:
    paths: Paths
    pods: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def refresh(self, client: CriClient) -> None:
        """Read the daemon's pods, containers and images; ids that vanished go to ``removed``."""
        pods = [p.id for p in client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items]
        listed = client.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
        containers = [c.id for c in listed]
        images = client.images.ListImages(pb.ListImagesRequest(), timeout=30).images
        gone = (set(self.pods) | set(self.containers)) - set(pods) - set(containers)
        self.removed = [*self.removed, *sorted(gone)][-20:]
        self.pods, self.containers = pods, containers
        self.running = [c.id for c in listed if c.state == pb.ContainerState.CONTAINER_RUNNING]
        self.images = [name for i in images for name in (i.id, *i.repo_tags, *i.repo_digests)]

    def pick(self, kind: str, index: int) -> str:
        """An id (or a prefix of one) of what ``kind`` names, chosen by ``index``; "" when there is none."""
        pools = {
            "pod": self.pods + self.removed,
            "container": self.running + self.containers + self.removed,
            "image": [*self.images, self.paths.image],
        }
        pool = pools[kind]
        if not pool:
            return ""
        chosen = pool[index % len(pool)]
        return chosen[: 6 + index % 7] if kind != "image" and index % 5 == 4 else chosen

    def name(self) -> str:
        return f"fz{next(self._names)}"


def ids(world: World, kind: str) -> st.SearchStrategy[str]:
    """Real ids of ``kind`` most of the time, hostile text otherwise."""
    return st.one_of(st.integers(0, 1 << 16).map(lambda i: world.pick(kind, i)), text())


def overrides(world: World) -> Overrides:
    """Field strategies for the generic messages: real ids, and host paths under the test's own."""
    tmp = str(world.paths.tmp)
    host_paths = st.sampled_from(
        [f"{tmp}/dir", f"{tmp}/file", f"{tmp}/missing", f"{tmp}/dir/../file", f"{tmp}/\0x", "", "/dev/null"]
    )
    return Overrides(
        {
            "pod_sandbox_id": ids(world, "pod"),
            "PodSandboxFilter.id": ids(world, "pod"),
            "PodSandboxStatsFilter.id": ids(world, "pod"),
            "container_id": ids(world, "container"),
            "ContainerFilter.id": ids(world, "container"),
            "ContainerStatsFilter.id": ids(world, "container"),
            "ImageSpec.image": ids(world, "image"),
            "host_path": host_paths,
            "StopContainerRequest.timeout": st.integers(-(1 << 63), 2),  # a container may ignore its stop signal
        }
    )


def pod_config(world: World, name: str) -> pb.PodSandboxConfig:
    paths = world.paths
    options = pb.NamespaceOption(network=pb.NamespaceMode.POD, ipc=pb.NamespaceMode.POD, pid=pb.NamespaceMode.CONTAINER)
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="fuzz", uid=f"uid-{name}", attempt=0),
        hostname=name,
        log_directory=str(paths.logs / name),
        dns_config=pb.DNSConfig(servers=["10.96.0.10"], searches=["fuzz.svc"], options=["ndots:5"]),
        port_mappings=[pb.PortMapping(protocol=pb.Protocol.TCP, container_port=80, host_port=0)],
        labels={"fuzz": "yes"},
        annotations={"fuzz": "yes"},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=paths.cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=options),
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
        ),
    )


def container_config(world: World, name: str) -> pb.ContainerConfig:
    tmp = world.paths.tmp
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image=world.paths.image),
        command=SLEEPER,
        envs=[pb.KeyValue(key="FUZZ", value=b"1")],
        working_dir="/",
        labels={"fuzz": "yes"},
        log_path=f"{name}.log",
        mounts=[pb.Mount(container_path="/data", host_path=f"{tmp}/dir", readonly=True)],
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(cpu_shares=256, memory_limit_in_bytes=64 << 20),
            security_context=pb.LinuxContainerSecurityContext(
                run_as_user=pb.Int64Value(value=1000), no_new_privs=True, masked_paths=["/proc/kcore"]
            ),
        ),
    )


def valid(world: World, method: MethodDescriptor) -> Message:
    """A request for ``method`` that the daemon accepts in the world as it is: a known-good one, else the empty
    request with its pod or container id set to a real one."""
    pod = world.pick("pod", 0)
    running = world.running[0] if world.running else world.pick("container", 0)
    name = world.name()
    requests: dict[str, Message] = {
        "RunPodSandbox": pb.RunPodSandboxRequest(config=pod_config(world, name)),
        "CreateContainer": pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config(world, name), sandbox_config=pod_config(world, name)
        ),
        "PullImage": pb.PullImageRequest(image=pb.ImageSpec(image=world.paths.image)),
        "ExecSync": pb.ExecSyncRequest(container_id=running, cmd=["id"], timeout=5),
        "Exec": pb.ExecRequest(container_id=running, cmd=["sh"], stdin=True, stdout=True, stderr=True),
        "Attach": pb.AttachRequest(container_id=running, stdout=True, stderr=True),
        "PortForward": pb.PortForwardRequest(pod_sandbox_id=pod, port=[80]),
        "UpdateContainerResources": pb.UpdateContainerResourcesRequest(
            container_id=running,
            linux=pb.LinuxContainerResources(
                cpu_shares=512, memory_limit_in_bytes=96 << 20, cpu_quota=50000, cpu_period=100000
            ),
        ),
        "StopContainer": pb.StopContainerRequest(container_id=running, timeout=1),
        "ContainerStatus": pb.ContainerStatusRequest(container_id=running, verbose=True),
        "PodSandboxStatus": pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True),
        "ImageStatus": pb.ImageStatusRequest(image=pb.ImageSpec(image=world.paths.image), verbose=True),
        "ListContainers": pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod)),
        "ContainerStats": pb.ContainerStatsRequest(container_id=running),
        "PodSandboxStats": pb.PodSandboxStatsRequest(pod_sandbox_id=pod),
        "UpdateRuntimeConfig": pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.88.0.0/16"))
        ),
    }
    known = requests.get(method.name)
    if known is not None:
        return known
    request: Message = message_factory.GetMessageClass(method.input_type)()
    for name, value in (("pod_sandbox_id", pod), ("container_id", running)):
        if name in method.input_type.fields_by_name:
            setattr(request, name, value)
    return request


def confine(request: Message, world: World) -> None:
    """Keep what reaches the host under the test's own paths: every pod config's cgroup parent under the test's
    parent and its log directory under the test's temp dir. A ``..`` form is kept where it still resolves inside
    (so the daemon's refusal of it, or its handling, is tested), and made harmless where it would not."""
    for config in _pod_configs(request):
        config.linux.cgroup_parent = _inside(config.linux.cgroup_parent, world.paths.cgroup_parent, keep_empty=False)
        config.log_directory = _inside(config.log_directory, str(world.paths.logs), keep_empty=True)


def _inside(value: str, top: str, keep_empty: bool) -> str:
    if not value and keep_empty:
        return value
    if value != top and not value.startswith(top + "/"):
        value = top + ("/" + value.lstrip("/") if value else "")
    resolved = os.path.normpath(value)
    if resolved != top and not resolved.startswith(top + "/"):
        value = value.replace("..", "__")
    return value


def _pod_configs(request: Message) -> list[pb.PodSandboxConfig]:
    if isinstance(request, pb.RunPodSandboxRequest):
        return [request.config]
    if isinstance(request, pb.CreateContainerRequest):
        return [request.sandbox_config]
    return []
