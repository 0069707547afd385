"""Benchmark: the kubelet's read path (relist and status calls) with N running pods, against any CRI endpoint.

The kubelet relists pods and containers every second and asks for the status of each pod it syncs; those calls
are cheap, so what counts is their latency as a client sees it. For each endpoint (``moorage``: a fresh daemon
on a temp root, as the integration tests start it; or a running runtime's ``unix:///...`` socket, side by side)
this sets up N pods (default 110, the kubelet's maxPods) each with one ``sleep`` container: runc, pid mode
CONTAINER as the kubelet sets it (no pause container), the loopback-only CNI network of the tests (for moorage;
a foreign endpoint uses its own), each pod under a cgroup parent of its own. It pulls 100 images from a local
docker-registry on 127.0.0.1 (each a distinct config over the same busybox layer). Then it times, with a
Python gRPC client, one call at a time after a warm-up:

- Version, the floor: a call that does no work (what the client, gRPC and the server's loop cost);
- Status (non-verbose), which the kubelet calls every few seconds for the node's readiness;
- ListPodSandbox and ListContainers (unfiltered, and filtered by pod id), the relist;
- PodSandboxStatus and ContainerStatus (non-verbose), cycling over every pod and container;
- PodSandboxStatus verbose (what critest -benchmark calls);
- ImageStatus (cycling over the 100 images by tag) and ListImages;
- ``moorage ps`` as a user runs it, a new Python process each time (median of 5; goal 100 ms wall).

Each figure is printed against its goal (issue 18: p50 <= 0.5 ms and p99 <= 2 ms; verbose p50 <= 2 ms).
Everything made is removed afterwards (pods, images pulled for the benchmark, cgroups), on errors and Ctrl-C
too. A foreign runtime must trust the registry on 127.0.0.1 over plain HTTP and use the cgroupfs driver.
Not a test: nothing here asserts a time. Run by hand (as root); figures go in README.md.

Usage: PYTHONPATH=. .venv/bin/python bench/readpath.py [--pods 110 250] [--images 100] [--runs 1000]
       [--endpoint moorage --endpoint unix:///run/containerd/containerd.sock]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.pods import RPC_TIMEOUT, SLEEP, Latency, Timer, attempt, container_config, pod_config, say, uninterrupted
from moorage.cli.client import CriClient
from moorage.cri import pb
from tests.fixtures import cgroups
from tests.fixtures import images as fixtures
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess

P50_GOAL, P99_GOAL, VERBOSE_GOAL, CLI_GOAL = 0.5, 2.0, 2.0, 100.0
CLI = "`moorage ps` wall (a new process)"
CLI_RUNS = 5


@dataclass(frozen=True)
class Call:
    name: str
    p50_goal: float
    p99_goal: float | None
    runs_share: float = 1.0  # of --runs: the slow ones need fewer samples


CALLS = (
    Call("Version (the floor: no work)", P50_GOAL, P99_GOAL),
    Call("Status", P50_GOAL, P99_GOAL),
    Call("ListPodSandbox", P50_GOAL, P99_GOAL),
    Call("ListContainers", P50_GOAL, P99_GOAL),
    Call("ListContainers (by pod)", P50_GOAL, P99_GOAL),
    Call("PodSandboxStatus", P50_GOAL, P99_GOAL),
    Call("ContainerStatus", P50_GOAL, P99_GOAL),
    Call("PodSandboxStatus verbose", VERBOSE_GOAL, None, 0.2),
    Call("ImageStatus", P50_GOAL, P99_GOAL),
    Call("ListImages", P50_GOAL, P99_GOAL),
    Call(CLI, CLI_GOAL, None),
)


@dataclass
class Setup:
    pods: list[str]
    containers: list[str]
    images: list[str]


class Workload:
    """Pods, containers and images on one endpoint; measures the read calls; removes what it made."""

    def __init__(self, client: CriClient, args: argparse.Namespace, names: list[str], image: str, tmp: Path):
        self.client, self.args, self.names, self.image, self.tmp = client, args, names, image, tmp
        self.cgroup_parent = f"/moorage-bench-{secrets.token_hex(4)}"
        self.made = Setup([], [], [])

    def setup(self, pods: int) -> None:
        began = time.monotonic()
        for name in [self.image, *self.names]:
            self.client.pull_image(name, timeout=RPC_TIMEOUT)
            self.made.images.append(name)
        say(f"  {len(self.names)} images pulled in {time.monotonic() - began:.1f} s; starting {pods} pods")
        began = time.monotonic()
        for index in range(pods):
            config = pod_config(index, self.cgroup_parent, self.tmp / "logs", share_pid=False)
            pod_id = self.client.run_pod(config, self.args.handler)
            self.made.pods.append(pod_id)
            container_id = self.client.create_container(pod_id, container_config(self.image), config)
            self.made.containers.append(container_id)
            self.client.start_container(container_id)
        say(f"  {pods} pods running after {time.monotonic() - began:.1f} s")

    def teardown(self) -> None:
        client = self.client
        for pod_id in self.made.pods:  # RemovePodSandbox stops and removes the pod with its container
            attempt(f"removing pod {pod_id}", functools.partial(client.remove_pod, pod_id))
        for name in self.made.images:
            attempt(f"removing image {name}", functools.partial(client.remove_image, name))
        attempt("removing the benchmark's cgroups", lambda: cgroups.remove(self.cgroup_parent))

    def calls(self) -> dict[str, Callable[[], object]]:
        rt, im, timeout = self.client.runtime, self.client.images, RPC_TIMEOUT
        pods, containers, images = (itertools.cycle(x) for x in (self.made.pods, self.made.containers, self.names))
        return {
            "Version (the floor: no work)": lambda: rt.Version(pb.VersionRequest(), timeout=timeout),
            "Status": lambda: rt.Status(pb.StatusRequest(), timeout=timeout),
            "ListPodSandbox": lambda: rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=timeout),
            "ListContainers": lambda: rt.ListContainers(pb.ListContainersRequest(), timeout=timeout),
            "ListContainers (by pod)": lambda: rt.ListContainers(
                pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=next(pods))), timeout=timeout
            ),
            "PodSandboxStatus": lambda: rt.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=next(pods)), timeout=timeout
            ),
            "ContainerStatus": lambda: rt.ContainerStatus(
                pb.ContainerStatusRequest(container_id=next(containers)), timeout=timeout
            ),
            "PodSandboxStatus verbose": lambda: rt.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=next(pods), verbose=True), timeout=timeout
            ),
            "ImageStatus": lambda: im.ImageStatus(
                pb.ImageStatusRequest(image=pb.ImageSpec(image=next(images))), timeout=timeout
            ),
            "ListImages": lambda: im.ListImages(pb.ListImagesRequest(), timeout=timeout),
        }

    def measure(self) -> dict[str, Latency]:
        timer = Timer()
        listed = self.client.list_containers()
        if sum(c.state == pb.ContainerState.CONTAINER_RUNNING for c in listed) < len(self.made.containers):
            raise RuntimeError("not every benchmark container is running")
        calls = self.calls()
        for call in CALLS:
            fn = calls.get(call.name)
            if fn is None:
                continue
            for _ in range(self.args.warmup):
                fn()
            for _ in range(max(int(self.args.runs * call.runs_share), 10)):
                timer(call.name, fn)
        argv = [sys.executable, "-m", "moorage.cli.main", "--endpoint", self.client.endpoint, "ps"]
        for _ in range(CLI_RUNS):
            timer(CLI, lambda: subprocess.run(argv, check=True, capture_output=True, timeout=RPC_TIMEOUT))
        return timer.summary(c.name for c in CALLS)


class Moorage:
    """A fresh moorage daemon on a temp root: the loopback network, trusting the registry."""

    def __init__(self, registry: Registry) -> None:
        self.node = DaemonProcess()
        self.node.log_level = "warning"
        self.node.trust_registry(registry.host)
        self.node.loopback_network()

    def __enter__(self) -> str:
        self.node.start()
        return self.node.endpoint

    def __exit__(self, *exc: object) -> None:
        attempt("stopping the daemon", self.node.cleanup)


def run_endpoint(endpoint: str, args: argparse.Namespace, pods: int, registry: Registry) -> dict[str, Latency]:
    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    daemon = Moorage(registry) if endpoint == "moorage" else None
    try:
        target = daemon.__enter__() if daemon else endpoint
        say(f"{endpoint}: {pods} pods")
        with CriClient(target, timeout=RPC_TIMEOUT) as client:
            work = Workload(client, args, image_names(registry, args.images), f"{registry.host}/bench/busybox:1", tmp)
            try:
                work.setup(pods)
                return work.measure()
            finally:
                with uninterrupted():
                    work.teardown()
    finally:
        with uninterrupted():
            if daemon:
                daemon.__exit__()
            shutil.rmtree(tmp, ignore_errors=True)


def image_names(registry: Registry, count: int) -> list[str]:
    return [f"{registry.host}/bench/image-{i}:1" for i in range(count)]


def push_images(registry: Registry, count: int) -> None:
    layer = fixtures.busybox_layer()
    fixtures.push(registry, "bench/busybox", "1", fixtures.image([layer], config={"Cmd": SLEEP}))
    for i in range(count):
        image = fixtures.image([layer], config={"Cmd": SLEEP, "Labels": {"bench.index": str(i)}})
        fixtures.push(registry, f"bench/image-{i}", "1", image)


def render(results: dict[tuple[str, int], dict[str, Latency]], args: argparse.Namespace) -> Iterator[str]:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    yield (f"Read path, {args.images} images, {args.runs} calls each after {args.warmup} warm-up "
           f"(verbose status: a fifth), one Python gRPC client, {os.cpu_count()} cores, load {load}")  # fmt: skip
    for (endpoint, pods), latency in results.items():
        yield ""
        floor = latency[CALLS[0].name].p50
        yield f"| {endpoint}, {pods} pods | p50 ms | p99 ms | p50 over the floor | goal p50 / p99 | met |"
        yield "| --- | ---: | ---: | ---: | --- | --- |"
        for call in CALLS:
            value = latency.get(call.name)
            if value is None:
                continue
            met = value.p50 <= call.p50_goal and (call.p99_goal is None or value.p99 <= call.p99_goal)
            goal = f"{call.p50_goal}" + (f" / {call.p99_goal}" if call.p99_goal is not None else "")
            over = f"{value.p50 - floor:+.2f}" if call.name != CLI else ""
            yield f"| {call.name} | {value.p50:.2f} | {value.p99:.2f} | {over} | {goal} | {'yes' if met else 'NO'} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, nargs="+", default=[110])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--handler", default="runc")
    parser.add_argument("--endpoint", action="append", help="moorage (a fresh daemon) or unix:///path.sock")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: pods need namespaces, mounts and cgroups")
    results: dict[tuple[str, int], dict[str, Latency]] = {}
    registry = Registry()
    try:
        registry.start()
        push_images(registry, args.images)
        for pods in args.pods:
            for endpoint in args.endpoint or ["moorage"]:
                results[(endpoint, pods)] = run_endpoint(endpoint, args, pods, registry)
    finally:
        with uninterrupted():
            registry.close()
    print("\n".join(render(results, args)))


if __name__ == "__main__":
    main()
