"""Benchmark: daemon cold start to first answer, idle memory, and the latency of the RPCs the kubelet polls.

Run by hand (`make bench`, or `PYTHONPATH=. .venv/bin/python bench/startup.py`); figures go in README.md.
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.pods import pss_kib, rss_kib
from moorage.cli.client import CriClient

STARTS = 10
CALLS = 2000
START_GOAL_MS = 500  # issue 18: ready on the socket in 0.5 s
IDLE_PSS_GOAL_MIB = 45.0  # issue 18


def start(tmp: Path) -> tuple[subprocess.Popen[bytes], float]:
    sock = tmp / "m.sock"
    argv = [sys.executable, "-m", "moorage.cli.main", "serve", "--root", str(tmp / "root"), "--state",
            str(tmp / "state"), "--socket", str(sock), "--log-level", "warning"]  # fmt: skip
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    while True:
        # A channel whose first connection failed waits out gRPC's reconnect back-off (about 1 s) before it
        # tries again, which measured the client, not the daemon: each attempt gets a fresh channel, made once
        # the socket is there (the daemon renames it into place when it serves).
        if sock.exists():
            with CriClient(f"unix://{sock}", timeout=1) as client:
                try:
                    client.version()
                    return proc, time.perf_counter() - began
                except grpc.RpcError:
                    pass
        time.sleep(0.002)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    starts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="moorage-bench-") as name:
        tmp = Path(name)
        for _ in range(STARTS):
            proc, took = start(tmp)
            starts.append(took)
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        proc, _ = start(tmp)
        try:
            with CriClient(f"unix://{tmp / 'm.sock'}") as client:
                for label, call in (("Version", client.version), ("Status", client.status),
                                    ("RuntimeConfig", client.runtime_config)):  # fmt: skip
                    times = []
                    for _ in range(CALLS):
                        t = time.perf_counter()
                        call()
                        times.append((time.perf_counter() - t) * 1e3)
                    print(
                        f"{label:14} p50 {percentile(times, 0.5):.3f} ms  p99 {percentile(times, 0.99):.3f} ms "
                        f"({CALLS} calls)"
                    )
            time.sleep(2.0)  # settled after the calls
            pss = pss_kib(proc.pid) / 1024
            print(f"{'idle RSS':14} {rss_kib(proc.pid) / 1024:.1f} MiB")
            met = "met" if pss <= IDLE_PSS_GOAL_MIB else "NO"
            print(f"{'idle PSS':14} {pss:.1f} MiB; goal {IDLE_PSS_GOAL_MIB} MiB: {met}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    median = statistics.median(starts) * 1e3
    print(
        f"{'cold start':14} median {median:.0f} ms, max {max(starts) * 1e3:.0f} ms "
        f"(exec to first Version answer, {STARTS} starts, {os.cpu_count()} cores); "
        f"goal {START_GOAL_MS} ms: {'met' if median <= START_GOAL_MS else 'NO'}"
    )


if __name__ == "__main__":
    main()
