"""Benchmark: pod churn for minutes, and whether the daemon's memory stays flat.

A kubelet on a busy node creates and deletes pods all day (jobs, cron jobs, rollouts). Whatever the daemon keeps
per pod and forgets to drop (an index entry, a cached message, a task, a descriptor) shows only under such churn.
This runs a real daemon on a temp root (as the integration tests start it), pulls a busybox image from a local
docker-registry on 127.0.0.1 (not timed) and then, for ``--minutes``, starts ``--rate`` pods a second (each
RunPodSandbox, CreateContainer and StartContainer of one ``sleep`` container, runc, loopback CNI, a cgroup parent
of its own), and removes each (StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox) once it has run
``--lifetime`` seconds: one thread starts, another removes, so about rate x lifetime pods are alive at a time.

Every ``--sample`` seconds it records the daemon's RSS and PSS, its open descriptors and threads. The first
minute is the warm-up (caches, the allocator's arenas, lazily imported modules); the figure is the growth after
it, against issue 18's goal of flat daemon memory: PSS at the end at most ``GROWTH_GOAL_MIB`` over the
first minute's; and the growth over the second half of the run with its least-squares slope in MiB per 1,000
pods (what a leak would show: caches have filled by then). Descriptors and threads must end
where they began. If the client falls behind the rate, the achieved rate is printed too.

Everything lives in temp dirs and a cgroup parent of our own, removed afterwards, on errors and Ctrl-C too.
Nothing leaves 127.0.0.1. Not a test: nothing here asserts a time. Run by hand (as root); figures go in
README.md.

Usage: PYTHONPATH=. .venv/bin/python bench/churn.py [--minutes 10] [--rate 5] [--lifetime 2] [--handler runc]
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bench.pods import (
    RPC_TIMEOUT,
    MoorageBench,
    Timer,
    container_config,
    pod_config,
    pss_kib,
    rss_kib,
    say,
    scratch,
    serve_busybox,
    uninterrupted,
)
from moorage.cli.client import CriClient

T = TypeVar("T")
GROWTH_GOAL_MIB = 2.0  # PSS after the warm-up minute → at the end
WARMUP_SECONDS = 60.0
STEPS = ("RunPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer",
         "StopPodSandbox", "RemovePodSandbox")  # fmt: skip


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the churn began
    started: int  # pods started so far
    rss_kib: int
    pss_kib: int
    fds: int
    threads: int


def sample(pid: int, at: float, started: int) -> Sample:
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return Sample(at, started, rss_kib(pid), pss_kib(pid), len(os.listdir(f"/proc/{pid}/fd")), threads)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


class Churn:
    """The starter and remover threads over one client, and the samples."""

    def __init__(self, bench: MoorageBench, args: argparse.Namespace) -> None:
        self.bench = bench
        self.args = args
        self.timer = Timer()
        self.lock = threading.Lock()
        self.alive: queue.Queue[tuple[float, str, str] | None] = queue.Queue()
        self.started = 0
        self.removed = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()

    def timed(self, step: str, fn: Callable[[], T]) -> T:
        began = time.perf_counter()
        result = fn()
        with self.lock:
            self.timer.add(step, (time.perf_counter() - began) * 1e3)
        return result

    def start_loop(self, client: CriClient, began: float) -> None:
        index = 0
        while not self.stop.is_set():
            if (wait := began + index / self.args.rate - time.monotonic()) > 0 and self.stop.wait(wait):
                break
            self.start(client, index)
            index += 1
        self.alive.put(None)

    def start(self, client: CriClient, index: int) -> None:
        """One pod with its container; whatever of it was made goes to the remover, a failure too."""
        config = pod_config(index, self.bench.cgroup_parent, self.bench.logs, False)
        pod_id = cid = ""
        try:
            pod_id = self.timed("RunPodSandbox", lambda: client.run_pod(config, self.args.handler))
            spec = container_config(self.bench.image)
            cid = self.timed("CreateContainer", lambda: client.create_container(pod_id, spec, config))
            self.timed("StartContainer", lambda: client.start_container(cid))
            with self.lock:
                self.started += 1
        except Exception as exc:  # counted and reported: a churn must run to its end
            self.fail("start", exc)
        if pod_id:
            self.alive.put((time.monotonic(), pod_id, cid))

    def remove_loop(self, client: CriClient) -> None:
        while (item := self.alive.get()) is not None:
            born, pod_id, cid = item
            if (wait := born + self.args.lifetime - time.monotonic()) > 0:
                time.sleep(wait)
            self.remove(client, pod_id, cid)

    def remove(self, client: CriClient, pod_id: str, cid: str) -> None:
        try:
            if cid:
                self.timed("StopContainer", lambda: client.stop_container(cid, 0))
                self.timed("RemoveContainer", lambda: client.remove_container(cid))
        except Exception as exc:
            self.fail("remove", exc)
        try:  # the pod goes whatever happened to its container
            self.timed("StopPodSandbox", lambda: client.stop_pod(pod_id))
            self.timed("RemovePodSandbox", lambda: client.remove_pod(pod_id))
            with self.lock:
                self.removed += 1
        except Exception as exc:
            self.fail("remove", exc)

    def fail(self, step: str, exc: Exception) -> None:
        with self.lock:
            self.failures[f"{step}: {type(exc).__name__}: {str(exc)[:120]}"] += 1

    def run(self, pid: int) -> list[Sample]:
        samples: list[Sample] = []
        with CriClient(self.bench.node.endpoint, timeout=RPC_TIMEOUT) as client:
            began = time.monotonic()
            threads = [
                threading.Thread(target=self.start_loop, args=(client, began), name="starter", daemon=True),
                threading.Thread(target=self.remove_loop, args=(client,), name="remover", daemon=True),
            ]
            for thread in threads:
                thread.start()
            samples.append(sample(pid, 0.0, 0))
            end = began + self.args.minutes * 60
            try:
                while (now := time.monotonic()) < end:
                    time.sleep(min(self.args.sample, end - now))
                    samples.append(sample(pid, time.monotonic() - began, self.started))
                    last = samples[-1]
                    say(f"churn: {last.at:6.0f} s, {last.started} pods started, {self.removed} removed, "
                        f"PSS {last.pss_kib / 1024:.1f} MiB, {last.fds} fds, {last.threads} threads")  # fmt: skip
            finally:
                self.stop.set()
                for thread in threads:
                    thread.join()
            time.sleep(2.0)  # the last removals' background work (runtime deletes) settles
            samples.append(sample(pid, time.monotonic() - began, self.started))
        return samples


def report(args: argparse.Namespace, churn: Churn, samples: list[Sample]) -> str:
    warm = next((s for s in samples if s.at >= WARMUP_SECONDS), samples[0])
    first, end = samples[0], samples[-1]
    half = [(s.started / 1000, s.pss_kib / 1024) for s in samples if s.at >= end.at / 2]
    growth = (end.pss_kib - warm.pss_kib) / 1024
    last = samples[-2] if len(samples) > 1 else end  # the last one taken while pods were started
    rate = last.started / (last.at or 1)
    met = "met" if growth <= GROWTH_GOAL_MIB else "NOT met"
    lines = [
        f"churn: {args.minutes} min at {args.rate}/s asked ({rate:.2f}/s achieved), each pod alive "
        f"{args.lifetime} s, handler {args.handler}; {end.started} pods started, {churn.removed} removed",
        "| what | start | after the first minute | end |",
        "| --- | ---: | ---: | ---: |",
        f"| daemon PSS, MiB | {first.pss_kib / 1024:.1f} | {warm.pss_kib / 1024:.1f} | {end.pss_kib / 1024:.1f} |",
        f"| daemon RSS, MiB | {first.rss_kib / 1024:.1f} | {warm.rss_kib / 1024:.1f} | {end.rss_kib / 1024:.1f} |",
        f"| open descriptors | {first.fds} | {warm.fds} | {end.fds} |",
        f"| threads | {first.threads} | {warm.threads} | {end.threads} |",
        f"PSS growth after the first minute: {growth:+.2f} MiB (goal <= {GROWTH_GOAL_MIB} MiB: {met}); "
        f"over the second half: {half[-1][1] - half[0][1]:+.2f} MiB, slope {slope(half):+.3f} MiB per 1,000 pods",
    ]
    for step, latency in churn.timer.summary(STEPS).items():
        lines.append(f"{step}: p50 {latency.p50:.1f} ms, p99 {latency.p99:.1f} ms ({latency.n})")
    for failure, count in churn.failures.most_common(10):
        lines.append(f"FAILED {count}x: {failure}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long pods are started and removed")
    parser.add_argument("--rate", type=float, default=5.0, help="pods started a second")
    parser.add_argument("--lifetime", type=float, default=2.0, help="seconds each pod runs before its removal")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--handler", default="runc", help="runtime handler of the pods")
    args = parser.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.lifetime < 0 or args.sample <= 0:
        parser.error("--minutes, --rate and --sample must be positive, --lifetime at least 0")
    # what MoorageBench reads of the pods benchmark's arguments
    args.sandbox_mode, args.pods, args.warmup, args.grace = "infra-less", 0, 0, 0
    return args


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: pods need namespaces, mounts and cgroups")
    with scratch("moorage-churn") as (tmp, cgroup_parent, registry):
        bench = MoorageBench(args, registry, serve_busybox(registry), f"{cgroup_parent}/pods", tmp)
        try:
            bench.node.start()
            assert bench.node.proc is not None
            with CriClient(bench.node.endpoint, timeout=RPC_TIMEOUT) as client:
                client.pull_image(bench.image)
            churn = Churn(bench, args)
            samples = churn.run(bench.node.proc.pid)
        finally:
            with uninterrupted():
                bench.teardown()
    print(report(args, churn, samples))


if __name__ == "__main__":
    main()
