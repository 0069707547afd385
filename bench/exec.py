"""Benchmark: running a command in a running container, as the kubelet's exec probes (ExecSync) and
``kubectl exec`` (Exec, then the streaming URL) do, against bare ``runc exec`` as the floor.

A real daemon on a temp root pulls the busybox image from a local docker-registry on 127.0.0.1, runs one pod
with one ``sleep`` container, and then times N runs of ``true`` each way after a few warm-up runs:
- ExecSync: the RPC, until it answers with the exit code;
- Exec + stream: the Exec RPC, the HTTP upgrade to SPDY/3.1, the streams, until the v4 status arrives (the client
  side of ``moorage exec``, in this process);
- the floor: ``runc exec`` with the same process.json, on the container moorage made.

Nothing leaves 127.0.0.1; everything is removed afterwards. Run by hand; figures go in README.md.
Usage: PYTHONPATH=. .venv/bin/python bench/exec.py [--runs 100] [--handler runc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.pods import (
    RPC_TIMEOUT,
    Latency,
    Timer,
    attempt,
    container_config,
    pod_config,
    say,
    serve_busybox,
    uninterrupted,
)
from moorage.cli.client import CriClient
from moorage.cri import pb
from moorage.streaming.client import Local, Options, remote_command
from tests.fixtures import cgroups
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess

STEPS = ("ExecSync", "Exec + stream", "runc exec")


def streamed(url: str) -> int:
    async def nothing() -> bytes:
        return b""

    local = Local(read_stdin=nothing, write_stdout=lambda _: None, write_stderr=lambda _: None)
    return asyncio.run(remote_command(url, Options(stdin=False, tty=False, stderr=True), local))


def measure(args: argparse.Namespace, node: DaemonProcess, image: str, cgroup_parent: str, tmp: Path) -> Timer:
    timer = Timer()
    with CriClient(node.endpoint, timeout=RPC_TIMEOUT) as client:
        client.pull_image(image)
        config = pod_config(0, cgroup_parent, tmp / "logs", share_pid=False)
        pod_id = client.run_pod(config, args.handler)
        container_id = client.create_container(pod_id, container_config(image), config)
        client.start_container(container_id)
        bundle = node.state / "bundles" / container_id
        process = json.loads((bundle / "config.json").read_text())["process"]
        process_file = tmp / "process.json"
        process_file.write_text(json.dumps(dict(process, args=["true"], terminal=False)))
        wrapper = node.state / "wrappers" / f"{args.handler}-cgroup-v1"
        runtime = str(wrapper) if wrapper.exists() else shutil.which(args.handler) or args.handler
        floor = [runtime, "--root", str(node.state / "runtime" / args.handler), "exec", f"--process={process_file}",
                 container_id]  # fmt: skip

        def exec_sync() -> None:
            response = client.runtime.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=["true"]))
            if response.exit_code != 0:
                raise RuntimeError(f"ExecSync: exit {response.exit_code}: {response.stderr!r}")

        def exec_stream() -> None:
            request = pb.ExecRequest(container_id=container_id, cmd=["true"], stdout=True, stderr=True)
            code = streamed(client.runtime.Exec(request).url)
            if code != 0:
                raise RuntimeError(f"Exec: exit {code}")

        def runc_exec() -> None:
            subprocess.run(floor, check=True, capture_output=True, timeout=RPC_TIMEOUT)

        for name, fn in zip(STEPS, (exec_sync, exec_stream, runc_exec), strict=True):
            say(f"{name}: {args.warmup} warm-up runs, then {args.runs}")
            for _ in range(args.warmup):
                fn()
            for _ in range(args.runs):
                timer(name, fn)
        client.stop_pod(pod_id)
        client.remove_pod(pod_id)
    return timer


def render(latency: dict[str, Latency], args: argparse.Namespace) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"exec of `true` in a running {args.handler} container, {args.runs} runs each (load {load})", "",
             "| way | p50 ms | p99 ms | mean ms |", "| --- | --- | --- | --- |"]  # fmt: skip
    for step in STEPS:
        if step in latency:
            value = latency[step]
            lines.append(f"| {step} | {value.p50:.1f} | {value.p99:.1f} | {value.mean:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--handler", default="runc")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: pods need namespaces, mounts and cgroups")
    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    cgroup_parent = f"/moorage-bench-{secrets.token_hex(4)}"
    registry = Registry()
    node = DaemonProcess()
    node.log_level = "warning"
    try:
        image = serve_busybox(registry)
        node.trust_registry(registry.host)
        node.loopback_network()
        node.start()
        began = time.monotonic()
        timer = measure(args, node, image, cgroup_parent, tmp)
        say(f"measured in {time.monotonic() - began:.0f} s")
    finally:
        with uninterrupted():
            attempt("stopping the daemon", node.cleanup)
            registry.close()
            attempt("removing the benchmark's cgroups", lambda: cgroups.remove(cgroup_parent))
            shutil.rmtree(tmp, ignore_errors=True)
    print(render(timer.summary(STEPS), args))


if __name__ == "__main__":
    main()
