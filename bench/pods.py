"""Benchmark: the pod lifecycle through the CRI socket, memory per running pod, and bare runc as the floor.

Moorage: a real daemon on a temp root (as the integration tests start it) pulls a busybox image from a local
docker-registry on 127.0.0.1 (not timed), runs one warm-up pod (not counted), then N pods each with one
``sleep`` container: RunPodSandbox, CreateContainer, StartContainer are timed one after the other, as one
kubelet would call them. With all N running it samples memory: the daemon's RSS growth over its baseline,
the conmon monitors' PSS (shared pages split between them) and the container processes' PSS. Then every pod
is torn down: StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox, each timed.

The floor: the same static-busybox rootfs, unpacked once into a read-only directory shared by N bundles,
under the bare OCI runtime (``runc create`` + ``runc start``, a temp ``--root``), then ``runc kill KILL``
(timed until the process is gone) and ``runc delete``. There is no monitor, so the memory is the container
processes' alone.

Everything lives in temp dirs and a cgroup parent of our own, and is removed afterwards, on errors and on
Ctrl-C/SIGTERM too. Nothing leaves 127.0.0.1.

Run by hand; figures go in README.md. Not a test: nothing here asserts a time.
Usage: PYTHONPATH=. .venv/bin/python bench/pods.py [--pods 50] [--handler runc] [--sandbox-mode pause] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import platform
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import moorage
from moorage.cli.client import CriClient
from moorage.cri import pb
from moorage.node import cgroupinfo
from moorage.runtime.containers.handlers import cgroup_compatible
from tests.fixtures import cgroups
from tests.fixtures import images as fixtures
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess

LOCAL_PAUSE_IMAGE = "localhost/moorage/pause:1.0"
SLEEP = ["sleep", "1000000"]
SETTLE_SECONDS = 2.0  # after the last start (or the warm-up), before memory is sampled
RPC_TIMEOUT = 60.0

P50_GOALS = {"RemoveContainer": 5.0}  # ms; issue 18
MOORAGE_STEPS = ("RunPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer",
                 "StopPodSandbox", "RemovePodSandbox")  # fmt: skip
RUNC_STEPS = ("create", "start", "kill", "delete", "kill+delete")

T = TypeVar("T")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- figures -------------------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so p99 of 50 samples is not just the max."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass(frozen=True)
class Latency:
    p50: float
    p99: float
    max: float
    mean: float
    n: int

    @classmethod
    def of(cls, ms: list[float]) -> Latency:
        return cls(percentile(ms, 0.5), percentile(ms, 0.99), max(ms), sum(ms) / len(ms), len(ms))


class Timer:
    """Latencies in ms by step name."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def __call__(self, step: str, fn: Callable[[], T]) -> T:
        began = time.perf_counter()
        result = fn()
        self.add(step, (time.perf_counter() - began) * 1e3)
        return result

    def add(self, step: str, ms: float) -> None:
        self.samples.setdefault(step, []).append(ms)

    def summary(self, steps: Iterable[str]) -> dict[str, Latency]:
        return {step: Latency.of(self.samples[step]) for step in steps if self.samples.get(step)}


# --- process memory ------------------------------------------------------------------------------------------


def status_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: private pages plus this process's share of pages shared with others."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def rss_kib(pid: int) -> int:
    try:
        return status_kib(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0


def process_table() -> dict[int, tuple[int, str, list[str]]]:
    """pid → (ppid, comm, argv) of every process we can read."""
    table: dict[int, tuple[int, str, list[str]]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        table[int(entry.name)] = (ppid, comm, [a.decode(errors="replace") for a in argv if a])
    return table


def descendants(roots: Iterable[int], table: dict[int, tuple[int, str, list[str]]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def monitors_of(directory: Path, table: dict[int, tuple[int, str, list[str]]]) -> set[int]:
    """The conmon processes working for the daemon whose files are under ``directory``."""
    marker = str(directory) + "/"
    return {pid for pid, (_, comm, argv) in table.items()
            if comm == "conmon" and any(marker in arg for arg in argv)}  # fmt: skip


@dataclass(frozen=True)
class Memory:
    """KiB: totals over all running pods, and per pod."""

    pods: int
    daemon_rss_before: int
    daemon_rss_running: int
    daemon_rss_after: int  # once every pod is removed again
    monitors: int  # conmon processes
    monitor_pss: int
    monitor_rss: int
    container_processes: int
    container_pss: int

    @property
    def daemon_rss_growth(self) -> int:
        return self.daemon_rss_running - self.daemon_rss_before

    def per_pod(self, kib: int) -> float:
        return kib / self.pods

    @property
    def headline_per_pod(self) -> float:
        """Daemon RSS growth plus monitor PSS, per pod."""
        return self.per_pod(self.daemon_rss_growth + self.monitor_pss)


# --- cleanup helpers -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C (or SIGTERM) waits until it has."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def attempt(what: str, fn: Callable[[], object]) -> None:
    """One cleanup step: a failure is reported and the next step still runs."""
    try:
        fn()
    except Exception as exc:
        say(f"cleanup: {what}: {exc}")


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def runtime_cli(binary: str, root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``<runtime> --root <root> ARGS``; stdio never inherited by a container (DEVNULL and a temp file)."""
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.run([binary, "--root", str(root), *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE if args[0] == "list" else subprocess.DEVNULL, stderr=err,
                              text=True, check=False)  # fmt: skip
        if check and proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{binary} {' '.join(args)} exited with {proc.returncode}: {err.read().strip()}")
    return proc


def runtime_command(binary: str, directory: Path) -> str:
    """``binary``, or for crun on a hybrid cgroup host (which crun refuses) the wrapper moorage runs it through."""
    return cgroup_compatible(binary, cgroupinfo.detect(), directory / f"{Path(binary).name}-cgroup-v1")


def delete_all(binary: str, root: Path) -> None:
    """Force-delete every container a runtime has under ``root`` (kills what still runs)."""
    if not root.is_dir():
        return
    listed = runtime_cli(binary, root, "list", "-q", check=False).stdout or ""
    for cid in listed.split():
        runtime_cli(binary, root, "delete", "--force", cid, check=False)


# --- moorage ---------------------------------------------------------------------------------------------------


def serve_busybox(registry: Registry) -> str:
    """Start ``registry`` and push the benchmarks' busybox image (``sleep`` by default) to it; its name."""
    registry.start()
    fixtures.push(registry, "bench/busybox", "1", fixtures.image([fixtures.busybox_layer()], config={"Cmd": SLEEP}))
    return f"{registry.host}/bench/busybox:1"


def pod_config(index: int, cgroup_parent: str, logs: Path, share_pid: bool) -> pb.PodSandboxConfig:
    options = pb.NamespaceOption(
        network=pb.NamespaceMode.POD,
        ipc=pb.NamespaceMode.POD,
        pid=pb.NamespaceMode.POD if share_pid else pb.NamespaceMode.CONTAINER,
    )
    name = f"bench-{index}"
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=f"uid-{index}-{secrets.token_hex(4)}"),
        hostname=name,
        labels={"app": "bench"},
        log_directory=str(logs / name),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"{cgroup_parent}/pod{index}",
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=options),
        ),
    )


def container_config(image: str) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="sleep"),
        image=pb.ImageSpec(image=image),
        command=SLEEP,
        log_path="sleep.log",
    )


@dataclass
class MoorageRun:
    latency: dict[str, Latency] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    memory: Memory | None = None


class MoorageBench:
    def __init__(self, args: argparse.Namespace, registry: Registry, image: str, cgroup_parent: str, tmp: Path) -> None:
        self.args = args
        self.image = image
        self.cgroup_parent = cgroup_parent
        self.logs = tmp / "logs"
        self.pause = args.sandbox_mode == "pause"
        self.node = DaemonProcess(f'sandbox_image = "{LOCAL_PAUSE_IMAGE}"\n' if self.pause else "")
        self.node.log_level = "warning"
        self.node.trust_registry(registry.host)
        self.node.loopback_network()  # CNI ADD/DEL run for every pod, with the loopback plugin only

    def run(self) -> MoorageRun:
        try:
            return self._measure()
        except Exception:
            say("moorage daemon log (tail):\n" + "\n".join(self.node.log().splitlines()[-20:]))
            raise
        finally:
            with uninterrupted():
                self.teardown()

    def _measure(self) -> MoorageRun:
        self.node.start()
        assert self.node.proc is not None
        daemon = self.node.proc.pid
        timer, result = Timer(), MoorageRun()
        with CriClient(self.node.endpoint, timeout=RPC_TIMEOUT) as client:
            client.pull_image(self.image)
            for index in range(self.args.warmup):
                self._pod_lifecycle(client, Timer(), -1 - index)
            time.sleep(SETTLE_SECONDS)
            before = rss_kib(daemon)
            say(f"moorage: starting {self.args.pods} pods ({self.args.sandbox_mode}, {self.args.handler})")
            pods = [self._start_pod(client, timer, index) for index in range(self.args.pods)]
            time.sleep(SETTLE_SECONDS)
            running = [c for c in client.list_containers() if c.state == pb.ContainerState.CONTAINER_RUNNING]
            if len(running) != self.args.pods:
                raise RuntimeError(f"{len(running)} of {self.args.pods} containers are running")
            rss_running = rss_kib(daemon)
            table = process_table()
            monitors = monitors_of(self.node.dir, table)
            contained = descendants(monitors, table) - monitors
            sampled = (sum(pss_kib(p) for p in monitors), sum(rss_kib(p) for p in monitors),
                       sum(pss_kib(p) for p in contained))  # fmt: skip
            say(f"moorage: stopping and removing {len(pods)} pods")
            for pod_id, container_id in pods:
                self._stop_pod(client, timer, pod_id, container_id)
            time.sleep(SETTLE_SECONDS)
            result.memory = Memory(
                pods=self.args.pods,
                daemon_rss_before=before,
                daemon_rss_running=rss_running,
                daemon_rss_after=rss_kib(daemon),
                monitors=len(monitors),
                monitor_pss=sampled[0],
                monitor_rss=sampled[1],
                container_processes=len(contained),
                container_pss=sampled[2],
            )
        result.latency, result.samples = timer.summary(MOORAGE_STEPS), timer.samples
        return result

    def _start_pod(self, client: CriClient, timer: Timer, index: int) -> tuple[str, str]:
        config = pod_config(index, self.cgroup_parent, self.logs, self.pause)
        pod_id = timer("RunPodSandbox", lambda: client.run_pod(config, self.args.handler))
        container = container_config(self.image)
        container_id = timer("CreateContainer", lambda: client.create_container(pod_id, container, config))
        timer("StartContainer", lambda: client.start_container(container_id))
        return pod_id, container_id

    def _stop_pod(self, client: CriClient, timer: Timer, pod_id: str, container_id: str) -> None:
        timer("StopContainer", lambda: client.stop_container(container_id, self.args.grace))
        timer("RemoveContainer", lambda: client.remove_container(container_id))
        timer("StopPodSandbox", lambda: client.stop_pod(pod_id))
        timer("RemovePodSandbox", lambda: client.remove_pod(pod_id))

    def _pod_lifecycle(self, client: CriClient, timer: Timer, index: int) -> None:
        self._stop_pod(client, timer, *self._start_pod(client, timer, index))

    def teardown(self) -> None:
        """Whatever is left: pods through the CRI, then (the daemon gone or failing) by hand."""
        node = self.node
        if node.proc is not None and node.proc.poll() is None:

            def remove_pods() -> None:
                with CriClient(node.endpoint, timeout=RPC_TIMEOUT) as client:
                    for pod in client.list_pods():
                        client.stop_pod(pod.id)
                        client.remove_pod(pod.id)

            attempt("removing pods through the CRI", remove_pods)
        table = process_table()
        monitors = monitors_of(node.dir, table)
        if monitors:
            say(f"cleanup: {len(monitors)} monitors left; killing them and their containers")
            kill_pids(descendants(monitors, table))
            kill_pids(monitors)
        runtimes = node.state / "runtime"
        for root in sorted(runtimes.iterdir()) if runtimes.is_dir() else []:
            wrapper = node.state / "wrappers" / f"{root.name}-cgroup-v1"
            binary = str(wrapper) if wrapper.exists() else shutil.which(root.name)
            if binary:
                attempt(f"deleting {root.name} containers", functools.partial(delete_all, binary, root))
        attempt("stopping the daemon and removing its dir", node.cleanup)


# --- the floor: the bare OCI runtime ------------------------------------------------------------------------


@dataclass
class RuncRun:
    binary: str
    wrapped: bool
    latency: dict[str, Latency] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    containers: int = 0
    container_processes: int = 0
    container_pss: int = 0

    def per_container(self, kib: int) -> float:
        return kib / self.containers


def wait_gone(pidfd: int, seconds: float) -> None:
    readable, _, _ = select.select([pidfd], [], [], seconds)
    if not readable:
        raise RuntimeError(f"the container did not exit within {seconds} s of SIGKILL")


class RuncBench:
    def __init__(self, args: argparse.Namespace, binary: str, cgroup_parent: str, tmp: Path) -> None:
        self.args = args
        self.name = binary
        self.cgroup_parent = cgroup_parent
        self.dir = tmp / "runc"
        self.dir.mkdir()
        self.binary = runtime_command(binary, self.dir)
        self.root = self.dir / "state"
        self.rootfs = self.dir / "rootfs"
        self.template: dict[str, Any] = {}

    def run(self) -> RuncRun:
        try:
            return self._measure()
        finally:
            with uninterrupted():
                attempt(f"deleting {self.binary} containers", lambda: delete_all(self.binary, self.root))
                shutil.rmtree(self.dir, ignore_errors=True)

    def _prepare(self) -> None:
        """The busybox layer the image has, unpacked once; a read-only root every bundle shares."""
        self.rootfs.mkdir()
        layer = fixtures.busybox_layer()
        with tarfile.open(fileobj=io.BytesIO(layer.blob), mode="r:gz") as tar:
            tar.extractall(self.rootfs, numeric_owner=True, filter="tar")
        subprocess.run([self.binary, "spec"], cwd=self.dir, check=True, capture_output=True)
        spec_file = self.dir / "config.json"
        self.template = json.loads(spec_file.read_text())
        spec_file.unlink()
        self.template["process"]["terminal"] = False
        self.template["process"]["args"] = SLEEP
        self.template["root"] = {"path": str(self.rootfs), "readonly": True}

    def _bundle(self, cid: str) -> Path:
        bundle = self.dir / "bundles" / cid
        bundle.mkdir(parents=True)
        spec = json.loads(json.dumps(self.template))
        spec["hostname"] = cid
        spec["linux"]["cgroupsPath"] = f"{self.cgroup_parent}/{cid}"
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def _measure(self) -> RuncRun:
        self._prepare()
        timer, result = Timer(), RuncRun(self.name, self.binary != self.name)
        for index in range(self.args.warmup):
            cid = f"warmup{index}"
            self._kill_delete(Timer(), cid, self._create_start(Timer(), cid))
        say(f"{Path(self.name).name}: starting {self.args.pods} containers")
        started = [(f"c{index}", self._create_start(timer, f"c{index}")) for index in range(self.args.pods)]
        time.sleep(SETTLE_SECONDS)
        table = process_table()
        pids = {pid for _, pid in started}
        contained = pids | descendants(pids, table)
        result.containers = len(started)
        result.container_processes = len(contained)
        result.container_pss = sum(pss_kib(pid) for pid in contained)
        say(f"{Path(self.name).name}: killing and deleting {len(started)} containers")
        for cid, pid in started:
            self._kill_delete(timer, cid, pid)
        result.latency, result.samples = timer.summary(RUNC_STEPS), timer.samples
        return result

    def _create_start(self, timer: Timer, cid: str) -> int:
        bundle = self._bundle(cid)
        pid_file = bundle / "pid"
        timer("create", lambda: runtime_cli(self.binary, self.root, "create", "--bundle", str(bundle),
                                            "--pid-file", str(pid_file), cid))  # fmt: skip
        timer("start", lambda: runtime_cli(self.binary, self.root, "start", cid))
        return int(pid_file.read_text())

    def _kill_delete(self, timer: Timer, cid: str, pid: int) -> None:
        pidfd = os.pidfd_open(pid)
        try:
            began = time.perf_counter()
            runtime_cli(self.binary, self.root, "kill", cid, "KILL")
            wait_gone(pidfd, 10.0)
            killed = time.perf_counter()
            runtime_cli(self.binary, self.root, "delete", cid)
            done = time.perf_counter()
        finally:
            os.close(pidfd)
        timer.add("kill", (killed - began) * 1e3)
        timer.add("delete", (done - killed) * 1e3)
        timer.add("kill+delete", (done - began) * 1e3)


# --- report ---------------------------------------------------------------------------------------------------


def first_line(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10).stdout
    except OSError:
        return ""
    return out.splitlines()[0].strip() if out else ""


def source_commit() -> str:
    """HEAD of the source tree, "+dirty" when files differ from it (others may be editing it)."""
    tree = Path(__file__).resolve().parents[1]
    head = first_line("git", "-C", str(tree), "rev-parse", "--short", "HEAD")
    status = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no", "src"],
                            capture_output=True, text=True, check=False).stdout  # fmt: skip
    if not head:
        return "unknown"
    return head + ("+dirty" if status.strip() else "")


def environment(args: argparse.Namespace, binary: str, load: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "load_average_at_start": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "moorage": moorage.__version__,
        "commit": source_commit(),
        "runtime": first_line(binary, "--version"),
        "conmon": first_line("conmon", "--version"),
        "pods": args.pods,
        "handler": args.handler,
        "sandbox_mode": args.sandbox_mode,
        "stop_grace_seconds": args.grace,
        "warmup": args.warmup,
    }


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def render(env: dict[str, Any], pods: MoorageRun, floor: RuncRun) -> str:
    name = Path(floor.binary).name
    pairs = [
        ("RunPodSandbox", ""),
        ("CreateContainer", "create"),
        ("StartContainer", "start"),
        ("StopContainer", "kill"),
        ("RemoveContainer", "delete"),
        ("StopPodSandbox", ""),
        ("RemovePodSandbox", ""),
    ]

    def cells(latency: Latency | None) -> str:
        return f"{latency.p50:.1f} | {latency.p99:.1f} | {latency.max:.1f}" if latency else "| |"

    lines = [
        f"Pod lifecycle, {env['pods']} pods with one `sleep` container each, handler {env['handler']}, "
        f"{env['sandbox_mode']} pods, {env['cores']} cores (load {env['load_average_at_start'][0]} at start), "
        f"kernel {env['kernel']}, moorage {env['moorage']} ({env['commit']}), {env['date']}",
        f"({env['runtime']}; {env['conmon']}; StopContainer grace {env['stop_grace_seconds']} s; "
        f"{env['warmup']} warm-up pod(s) not counted"
        + (f"; bare {name} run through moorage's hybrid-cgroup wrapper, as moorage runs it)" if floor.wrapped else ")"),
        "",
        f"| step (ms) | moorage p50 | p99 | max | bare {name} | p50 | p99 | max |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for step, runc_step in pairs:
        runc_label = f"`{name} {runc_step}`" if runc_step else ""
        if runc_step == "kill":
            runc_label += " until exited"
        lines.append(f"| {step} | {cells(pods.latency.get(step))} | {runc_label} | "
                     f"{cells(floor.latency.get(runc_step))} |")  # fmt: skip
    lines.append(f"| | | | | `{name} kill` + `delete` | {cells(floor.latency.get('kill+delete'))} |")
    for step, goal in P50_GOALS.items():
        if (latency := pods.latency.get(step)) is not None:
            met = "met" if latency.p50 <= goal else "NO"
            lines.append(f"\n{step} p50 {latency.p50:.1f} ms, goal {goal} ms (issue 18): {met}")
    memory = pods.memory
    assert memory is not None
    pause = " incl. pause" if env["sandbox_mode"] == "pause" else ""
    lines += [
        "",
        f"| memory with {memory.pods} running (KiB per pod) | moorage | bare {name} |",
        "| --- | ---: | ---: |",
        f"| **daemon + monitor** | **{memory.headline_per_pod:.0f}** | 0 |",
        f"| daemon RSS growth ({mib(memory.daemon_rss_before)} → {mib(memory.daemon_rss_running)}; "
        f"{mib(memory.daemon_rss_after)} once all removed) | {memory.per_pod(memory.daemon_rss_growth):.0f} | |",
        f"| monitors: conmon PSS ({memory.monitors} processes; RSS {memory.per_pod(memory.monitor_rss):.0f}) "
        f"| {memory.per_pod(memory.monitor_pss):.0f} | none |",
        f"| container processes PSS ({memory.container_processes}{pause} / {floor.container_processes} processes) "
        f"| {memory.per_pod(memory.container_pss):.0f} | {floor.per_container(floor.container_pss):.0f} |",
    ]
    return "\n".join(lines)


def as_json(env: dict[str, Any], pods: MoorageRun, floor: RuncRun) -> dict[str, Any]:
    memory = pods.memory
    assert memory is not None
    return {
        "environment": env,
        "moorage": {
            "latency_ms": {step: asdict(latency) for step, latency in pods.latency.items()},
            "samples_ms": {step: [round(ms, 2) for ms in pods.samples[step]] for step in pods.latency},
            "memory_kib": asdict(memory)
            | {
                "daemon_rss_growth": memory.daemon_rss_growth,
                "per_pod": {
                    "daemon_plus_monitor": memory.headline_per_pod,
                    "daemon_rss_growth": memory.per_pod(memory.daemon_rss_growth),
                    "monitor_pss": memory.per_pod(memory.monitor_pss),
                    "monitor_rss": memory.per_pod(memory.monitor_rss),
                    "container_pss": memory.per_pod(memory.container_pss),
                },
            },
        },
        "floor": {
            "runtime": floor.binary,
            "through_hybrid_cgroup_wrapper": floor.wrapped,
            "latency_ms": {step: asdict(latency) for step, latency in floor.latency.items()},
            "samples_ms": {step: [round(ms, 2) for ms in floor.samples[step]] for step in floor.latency},
            "memory_kib": {
                "containers": floor.containers,
                "container_processes": floor.container_processes,
                "container_pss": floor.container_pss,
                "per_container": {"monitor": 0, "container_pss": floor.per_container(floor.container_pss)},
            },
        },
    }


# --- main -----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=50, help="pods (and bare runtime containers) to run at once")
    parser.add_argument("--handler", default="runc", help="runtime handler of the pods; also the floor's runtime")
    parser.add_argument("--sandbox-mode", choices=("infra-less", "pause"), default="infra-less",
                        help="pause: each pod shares one PID namespace, held by moorage's pause container")  # fmt: skip
    parser.add_argument("--grace", type=int, default=0,
                        help="StopContainer timeout: seconds between the stop signal and SIGKILL (0: SIGKILL at once;"
                             " `sleep` as its namespace's PID 1 ignores SIGTERM anyway)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured pods (and containers) run first")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the table goes to stderr)")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.warmup < 0:
        parser.error("--pods must be at least 1, --warmup at least 0")
    return args


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[tuple[Path, str, Registry]]:
    """A temp dir, a cgroup parent name and a registry (not started) of a benchmark's own, all removed when it
    ends; SIGTERM is an interrupt, and an interrupt exits 130 once they are."""
    signal.signal(signal.SIGTERM, interrupt)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    cgroup_parent = f"/{prefix}-{secrets.token_hex(4)}"
    registry = Registry()
    try:
        yield tmp, cgroup_parent, registry
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        sys.exit(130)
    finally:
        with uninterrupted():
            registry.close()
            attempt("removing the benchmark's cgroups", lambda: cgroups.remove(cgroup_parent))
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    args = parse_args()
    binary = shutil.which(args.handler)
    if binary is None:
        sys.exit(f"the {args.handler} binary is not in PATH (the floor runs it directly)")
    if os.geteuid() != 0:
        sys.exit("run as root: pods need namespaces, mounts and cgroups")
    load = os.getloadavg()
    with scratch("moorage-bench") as (tmp, cgroup_parent, registry):
        bench = MoorageBench(args, registry, serve_busybox(registry), f"{cgroup_parent}/pods", tmp)
        pods = bench.run()
        with uninterrupted():
            registry.close()
        floor = RuncBench(args, binary, f"{cgroup_parent}/{args.handler}", tmp).run()
    env = environment(args, binary, load)
    table = render(env, pods, floor)
    if args.json:
        say(table)
        print(json.dumps(as_json(env, pods, floor), indent=2))
    else:
        print(table)


if __name__ == "__main__":
    main()
