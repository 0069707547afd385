"""Property/fuzz test of the whole CRI surface: random and mutated requests for every RPC of RuntimeService and
ImageService, over real gRPC, to a real daemon with real pods, containers and images (issue 12, Fuzzing).

Each example is a batch of requests: drawn from the proto descriptors (tests/fuzz/messages.py), or a valid
request with one field replaced, naming real existing and just-removed pods, containers and images
(tests/fuzz/world.py). Properties: every answer is OK or a deliberate status with a message, never UNKNOWN,
INTERNAL or a hang (tests/fuzz/calls.py); the daemon answers Version after every batch; and once everything the
fuzz made is removed through the CRI, nothing is left: no mount, process, container cgroup, pod namespace, veth,
IP lease or bundle (and the integration conftest's session check for the rest).

Network safety: the daemon, its CNI plugins (bridge, host-local, portmap) and the registry all run in a net
namespace the test made; pulls of made-up registries fail there without a packet leaving it.

Bounded: ``MOORAGE_FUZZ_EXAMPLES`` examples (default :data:`CI_EXAMPLES`), derandomized so CI runs the same
requests every time; ``MOORAGE_FUZZ_SEED=<n>`` draws another sequence, for long runs by hand.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from moorage.cri import pb
from tests.fixtures import cgroups
from tests.fixtures import images as fixtures
from tests.fixtures.netns import Netns, netns
from tests.fixtures.registry import Registry
from tests.fuzz.calls import RPCS, Answer, invoke
from tests.fuzz.messages import describe, message, mutated
from tests.fuzz.world import Paths, World, confine, container_config, overrides, pod_config, valid
from tests.integration.daemon import DaemonProcess

pytestmark = pytest.mark.integration

CI_EXAMPLES = 400
EXAMPLES = int(os.environ.get("MOORAGE_FUZZ_EXAMPLES", CI_EXAMPLES))
SEED = os.environ.get("MOORAGE_FUZZ_SEED")
KEEP_GOING = bool(os.environ.get("MOORAGE_FUZZ_KEEP_GOING"))  # long runs: collect every kind of finding, then fail
BATCH = 4  # requests per example, then Version
MAX_PODS = 6  # more are removed between examples, so a long run stays small
NETWORK = "moorage-fuzz"
BRIDGE = "mtfuzz0"
HEX_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class FuzzNode:
    daemon: DaemonProcess
    ns: Netns
    world: World
    leases: Path


def network(leases: Path) -> str:
    bridge = (
        f'{{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipam": {{"type": "host-local", '
        f'"dataDir": "{leases}", "ranges": [[{{"subnet": "10.88.13.0/24"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}}}'
    )
    portmap = '{"type": "portmap", "capabilities": {"portMappings": true}}'
    return f'{{"cniVersion": "1.0.0", "name": "{NETWORK}", "plugins": [{bridge}, {portmap}]}}'


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    tmp = tmp_path_factory.mktemp("fuzz")
    for sub in ("dir", "logs", "seccomp"):
        (tmp / sub).mkdir()
    (tmp / "file").write_text("fuzz\n")
    (tmp / "seccomp" / "profile.json").write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    with cgroups.pod_cgroup() as parent, netns(tmp, "node") as ns:
        registry = Registry()
        daemon = DaemonProcess()
        try:
            ns.call(registry.start)  # listens on the namespace's loopback: only the daemon there reaches it
            img = fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["/bin/sh"]})
            ns.call(fixtures.push, registry, "test/busybox", "1", img)
            daemon.netns = ns.path
            daemon.write_config(f'[runtime]\nseccomp_profile_root = "{tmp / "seccomp"}"', image="pull_retries = 1")
            daemon.registries_conf.write_text(
                f'unqualified-search-registries = ["{registry.host}"]\n'
                f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
            )
            daemon.cni_dir.mkdir()
            (daemon.cni_dir / "50-fuzz.conflist").write_text(network(tmp / "leases"))
            daemon.start()
            image = f"{registry.host}/test/busybox:1"
            world = World(Paths(tmp=tmp, cgroup_parent=parent, image=image, registry=registry.host))
            with daemon.client(timeout=60) as client:
                client.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
            yield FuzzNode(daemon, ns, world, tmp / "leases")
        finally:
            try:
                if daemon.proc is not None and daemon.proc.poll() is None:
                    daemon.remove_all_pods()
            finally:
                daemon.cleanup()
                registry.close()


def ensure_base(node: FuzzNode) -> None:
    """A ready pod with a running container, made again when the fuzz removed them."""
    world = node.world
    with node.daemon.client(timeout=60) as client:
        world.refresh(client)
        if world.running:
            return
        name = f"base-{world.name()}"
        pod = client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(world, name))).pod_sandbox_id
        config = container_config(world, name)
        request = pb.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=pod_config(world, name))
        container = client.runtime.CreateContainer(request).container_id
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=container))
        world.refresh(client)


def bound(node: FuzzNode) -> None:
    """At most :data:`MAX_PODS` pods: the others go (keeping the one with the running container)."""
    world = node.world
    if len(world.pods) <= MAX_PODS:
        return
    with node.daemon.client(timeout=60) as client:
        keep = {c.pod_sandbox_id for c in client.runtime.ListContainers(pb.ListContainersRequest()).containers
                if c.id in world.running[:1]}  # fmt: skip
        for pod in world.pods:
            if pod not in keep:
                client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        world.refresh(client)


def expect(code: grpc.StatusCode, text: str, call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert text in str(err.value.details())


def test_what_the_fuzz_found_is_answered_precisely(fuzz_node: FuzzNode) -> None:
    """Each was INTERNAL before: found by the fuzz, fixed, and pinned here."""
    ensure_base(fuzz_node)
    world = fuzz_node.world
    running = world.running[0]
    bad = grpc.StatusCode.INVALID_ARGUMENT
    with fuzz_node.daemon.client(timeout=30) as client:
        rt = client.runtime
        # A program the container does not have: NOT_FOUND naming it (was INTERNAL "exec failed").
        exec_missing = pb.ExecSyncRequest(container_id=running, cmd=["/no/such/program"], timeout=5)
        expect(grpc.StatusCode.NOT_FOUND, "cmd[0] '/no/such/program' not found", lambda: rt.ExecSync(exec_missing))
        # A cpuset that is no CPU list (was INTERNAL: the kernel refused runc's write).
        cpuset = pb.UpdateContainerResourcesRequest(
            container_id=running, linux=pb.LinuxContainerResources(cpuset_cpus="sha256:00")
        )
        expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            "linux.cpuset_cpus: 'sha256:00'",
            lambda: rt.UpdateContainerResources(cpuset),
        )
        # A value only the kernel knows it refuses (cpu.cfs_period_us below 1 ms): INVALID_ARGUMENT with its words.
        period = pb.UpdateContainerResourcesRequest(
            container_id=running, linux=pb.LinuxContainerResources(cpu_period=5, cpu_quota=5)
        )
        expect(bad, "the kernel refused", lambda: rt.UpdateContainerResources(period))
        # Negative shares (was INTERNAL: runc cannot even parse the spec).
        pod = world.pods[0]
        config = container_config(world, "negative")
        config.linux.resources.cpu_shares = -(1 << 63)
        create = pb.CreateContainerRequest(pod_sandbox_id=pod, config=config)
        expect(
            grpc.StatusCode.INVALID_ARGUMENT, "config.linux.resources.cpu_shares", lambda: rt.CreateContainer(create)
        )
        # A memory limit below what runc itself needs (was INTERNAL "unable to set memory limit"), CRI-O's minimum.
        tiny = pb.UpdateContainerResourcesRequest(
            container_id=running, linux=pb.LinuxContainerResources(memory_limit_in_bytes=99)
        )
        expect(bad, "linux.memory_limit_in_bytes: 99 is below the minimum", lambda: rt.UpdateContainerResources(tiny))
        # A resource runc refuses in its own check of the config (unified keys on cgroup v1; was INTERNAL).
        if not cgroups.is_v2():
            unified = pb.UpdateContainerResourcesRequest(
                container_id=running, linux=pb.LinuxContainerResources(unified={"memory.high": "max"})
            )
            expect(bad, "cannot use unified on cgroup v1", lambda: rt.UpdateContainerResources(unified))
        # An enum value the proto does not define (was INTERNAL: a ValueError naming the mode).
        unknown = pod_config(world, "unknown-mode")
        unknown.linux.security_context.namespace_options.pid = 2147483647  # type: ignore[assignment]
        run = pb.RunPodSandboxRequest(config=unknown)
        pid = "config.linux.security_context.namespace_options.pid: 2147483647 is not a NamespaceMode"
        expect(bad, pid, lambda: rt.RunPodSandbox(run))
        assert rt.ExecSync(pb.ExecSyncRequest(container_id=running, cmd=["true"], timeout=5)).exit_code == 0


def fuzz_settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        derandomize=SEED is None,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the daemon's state is not reset between examples
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


def test_every_rpc_answers_random_and_mutated_requests_deliberately(fuzz_node: FuzzNode) -> None:
    node, world = fuzz_node, fuzz_node.world
    fields = overrides(world)
    findings: dict[str, str] = {}  # kind (rpc, code, message with ids blanked) → the first request that found it
    counts: dict[str, int] = {}
    mounts_before = set(node.daemon.mounts())
    channel = grpc.insecure_channel(f"unix:{node.daemon.socket}")

    def one(data: st.DataObject) -> None:
        service, method = data.draw(st.sampled_from(RPCS), label="rpc")
        if data.draw(st.booleans()):
            request = data.draw(mutated(valid(world, method), fields), label=f"{method.name}, one field changed")
        else:
            request = data.draw(message(method.input_type, fields), label=method.name)
        confine(request, world)
        answer: Answer = invoke(channel, service, method, request)
        counts[answer.code.name] = counts.get(answer.code.name, 0) + 1
        finding = answer.finding()
        if finding is not None:
            said = f"{answer.code.name} {answer.details[:400]!r}"
            kind = re.sub(r"[0-9a-f]{12,}|\d+", "#", f"{method.name} {said}")[:160]
            findings.setdefault(kind, f"{method.name}: {finding}: {said}\n  {describe(request)}")

    @given(st.data())
    def batch(data: st.DataObject) -> None:
        ensure_base(node)
        for _ in range(BATCH):
            one(data)
            with node.daemon.client(timeout=60) as client:
                world.refresh(client)
        with node.daemon.client(timeout=10) as client:
            assert client.version().runtime_name == "moorage", "the daemon stopped serving"
        assert KEEP_GOING or not findings, "\n".join(findings.values())
        bound(node)

    runner = seed(int(SEED))(batch) if SEED is not None else batch
    started = time.monotonic()
    try:
        fuzz_settings()(runner)()
    finally:
        channel.close()
        print(f"fuzz: {EXAMPLES} examples x {BATCH} requests in {time.monotonic() - started:.1f}s: {counts}")
    assert not findings, f"{len(findings)} kinds of findings:\n" + "\n".join(findings.values())
    assert "rpc crashed" not in node.daemon.log(), "the daemon logged a crash (an INTERNAL answer)"
    assert_nothing_left(node, mounts_before)


def assert_nothing_left(node: FuzzNode, mounts_before: set[str]) -> None:
    """After removing every pod, container and image through the CRI: nothing of theirs is left."""
    daemon, parent = node.daemon, node.world.paths.cgroup_parent
    with daemon.client(timeout=60) as client:
        for container in client.runtime.ListContainers(pb.ListContainersRequest()).containers:
            client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container.id))
        daemon.remove_all_pods()
        for image in client.images.ListImages(pb.ListImagesRequest()).images:
            client.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image.id)))
        assert not client.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        assert not client.images.ListImages(pb.ListImagesRequest()).images
    assert set(daemon.mounts()) - mounts_before == set(), "mounts left under the daemon's dirs"
    for directory in (daemon.state / "pods", daemon.state / "bundles", daemon.root / "containers"):
        assert not (directory.is_dir() and any(directory.iterdir())), f"{directory} is not empty"
    assert not _leases(node.leases), "IP leases left"
    assert not [link for link in node.ns.links() if link.startswith("veth")], "veths left in the node namespace"
    left = [p for top in cgroups.existing(parent) for p in top.rglob("*") if p.is_dir() and HEX_ID.match(p.name)]
    assert not left, f"container cgroups left: {left}"
    procs = [p for top in cgroups.existing(parent) for f in top.rglob("cgroup.procs") for p in f.read_text().split()]
    assert not procs, f"processes left in the pods' cgroups: {procs}"
    conmons = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _runs_from(p, daemon.dir)]
    assert conmons == [daemon_pid(daemon)], f"processes of the daemon's dirs left: {conmons}"


def daemon_pid(daemon: DaemonProcess) -> Path:
    assert daemon.proc is not None
    return Path(f"/proc/{daemon.proc.pid}")


def _runs_from(proc: Path, directory: Path) -> bool:
    try:
        return str(directory) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def _leases(directory: Path) -> list[str]:
    net = directory / NETWORK
    return [p.name for p in net.iterdir() if p.name[0].isdigit() or ":" in p.name] if net.is_dir() else []
