"""Run critest, the Kubernetes CRI validation suite, against a fresh Moorage daemon, and judge the result.

``python -m tests.critest.run [--handler crun] [--parallel 2] [--focus REGEX] [--benchmark]``

Everything runs inside a network namespace of the harness's own (it re-executes itself under
``unshare --net`` when started in the host's): the docker-registry holding the images critest pulls (built
from Debian binaries by :mod:`tests.critest.images`), the daemon, the CNI bridge, its pods and critest itself.
critest's traffic goes to 127.0.0.1 (registry, streaming server, host ports) and to pod IPs of
:data:`POD_SUBNET`; all of it stays in that namespace, which vanishes with the harness.

The daemon mirrors registry.k8s.io, k8s.gcr.io and gcr.io to the local registry through its registries.conf,
so critest runs with its default image names. Its CNI network is a bridge with hairpin on (a pod reaches
itself through its host port) and portmap for host ports, with no masquerade.

The judgement: the run passes when no spec failed and every skipped spec is one this node cannot run
(:data:`UNSUPPORTED`). A spec the node can never pass is not run (:data:`NOT_RUN`) and is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from moorage.node import apparmor
from moorage.node.cgroups import DEFAULT_CGROUPFS_PARENT
from tests.critest.images import build_and_push, prepare
from tests.fixtures import cgroups
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess

CHECKOUT = Path(__file__).resolve().parents[2]
TOOLS = CHECKOUT / "build" / "cri-tools"
CRITEST = TOOLS / "critest"
MIRRORED = ("registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws")  # the last: critest -benchmark's images
BRIDGE = "mrgcritest0"
POD_SUBNET = "10.213.0.0/24"
NETNS_MARK = "MOORAGE_CRITEST_STARTED_IN_NETNS"

NOT_RUN = {
    r"public image with digest should be pulled and removed": (
        "pins the public image's exact bytes by digest; this node has no internet to fetch them"
    ),
}
"""Specs the harness skips, with why: they cannot pass on any runtime without the internet."""

UNSUPPORTED = {
    r"^\[k8s\.io\] NRI ": "moorage has no NRI (Node Resource Interface) plugin socket; critest needs one",
}
"""Skips that are allowed: what this node (or Moorage, by an open issue) cannot do yet."""
if not apparmor.enabled():
    UNSUPPORTED[r"AppArmor|apparmor"] = "the kernel has AppArmor off (make test-cgroupv2 runs them in a guest)"


BENCHMARK_PARAMS = """\
containersNumber: 50
containersNumberParallel: 1
containerBenchmarkTimeoutSeconds: 600
podsNumber: 50
podsNumberParallel: 1
podBenchmarkTimeoutSeconds: 600
imagesNumber: 20
imagesNumberParallel: 1
imageBenchmarkTimeoutSeconds: 600
podContainerStartBenchmarkTimeoutSeconds: 600
"""
"""critest -benchmark: 50 pod and container lifecycles and 20 image pulls, one at a time (its default is one)."""


@dataclass
class Outcome:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def bad_skips(self) -> list[tuple[str, str]]:
        allowed = [*NOT_RUN, *UNSUPPORTED]
        return [(name, why) for name, why in self.skipped if not any(re.search(p, name) for p in allowed)]


def enter_private_netns() -> None:
    """Re-execute this harness in a new network namespace with only ``lo`` up; the re-executed harness checks
    that it is no longer in the namespace it was started in."""
    here = str(os.stat("/proc/self/ns/net").st_ino)
    started_in = os.environ.get(NETNS_MARK)
    if started_in is None:
        argv = [sys.executable, "-m", "tests.critest.run", *sys.argv[1:]]
        os.chdir(CHECKOUT)
        os.execvpe("unshare", ["unshare", "--net", "--", *argv], {**os.environ, NETNS_MARK: here})
    if started_in == here:
        raise SystemExit("critest harness: unshare --net left this process in its first network namespace")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # portmap DNATs 127.0.0.1:<hostPort> to the pod: the kernel must route loopback-sourced packets out
    subprocess.run(["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"], check=True)


def registries_conf(registry: str) -> str:
    blocks = [
        f'[[registry]]\nprefix = "{host}"\nlocation = "{host}"\n\n'
        f'[[registry.mirror]]\nlocation = "{registry}"\ninsecure = true\n'
        for host in MIRRORED
    ]
    return "\n".join(blocks) + f'\n[[registry]]\nlocation = "{registry}"\ninsecure = true\n'


def cni_network() -> str:
    return textwrap.dedent(
        f"""\
        {{
          "cniVersion": "1.0.0",
          "name": "moorage-critest",
          "plugins": [
            {{
              "type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
              "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_SUBNET}"}}]],
                        "routes": [{{"dst": "0.0.0.0/0"}}]}}
            }},
            {{"type": "portmap", "capabilities": {{"portMappings": true}}, "snat": true}},
            {{"type": "loopback"}}
          ]
        }}
        """
    )


@contextmanager
def moorage_node(registry: str) -> Iterator[DaemonProcess]:
    """A fresh daemon in this namespace: default handlers and pause image, the mirrors, the critest network.
    Its streaming server listens on a free port of 127.0.0.1, which is where critest connects."""
    daemon = DaemonProcess('sandbox_image = "localhost/moorage/pause:1.0"\n')
    daemon.log_level = "info"
    # critest's pods name no cgroup parent, so they live under the runtime's default one: removed after the run
    # unless the node had it before
    had_default_parent = bool(cgroups.existing(DEFAULT_CGROUPFS_PARENT))
    try:
        daemon.registries_conf.write_text(registries_conf(registry))
        daemon.cni_dir.mkdir(exist_ok=True)
        (daemon.cni_dir / "10-critest.conflist").write_text(cni_network())
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()
        if not had_default_parent:
            cgroups.remove(DEFAULT_CGROUPFS_PARENT)


def critest_argv(daemon: DaemonProcess, args: argparse.Namespace, report: Path) -> list[str]:
    argv = [str(CRITEST), f"-runtime-endpoint={daemon.endpoint}", f"-image-endpoint={daemon.endpoint}"]
    argv.append("-ginkgo.no-color")
    if args.handler:
        argv.append(f"-runtime-handler={args.handler}")
    if args.benchmark:
        params = report.parent / "benchmark-params.yaml"
        params.write_text(BENCHMARK_PARAMS)
        argv += ["-benchmark", f"-benchmarking-params-file={params}", f"-benchmarking-output-dir={report.parent}"]
        return argv
    if args.parallel > 1:
        argv.append(f"-parallel={args.parallel}")  # ginkgo nodes; critest refuses -parallel=1
    argv += [f"-ginkgo.junit-report={report}", "-ginkgo.timeout=40m"]
    argv.append("-ginkgo.skip=" + "|".join(NOT_RUN))
    if args.focus:
        argv.append(f"-ginkgo.focus={args.focus}")
    return argv


def read_report(report: Path) -> Outcome:
    outcome = Outcome()
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        if not name.startswith("[It]"):
            continue  # BeforeSuite/AfterSuite nodes: their failures fail the specs they belong to
        name = re.sub(r"^\[It\]\s*", "", name)
        status = case.get("status", "")
        if status == "passed":
            outcome.passed.append(name)
        elif status in ("skipped", "pending"):
            skipped = case.find("skipped")
            why = skipped.get("message", "") if skipped is not None else ""
            if why.startswith("skipped - "):  # skipped by the spec itself; plain "skipped" is a filtered-out spec
                outcome.skipped.append((name, why.removeprefix("skipped - ").strip()))
        else:
            outcome.failed.append(name)
    return outcome


def judge(label: str, outcome: Outcome) -> bool:
    for name in outcome.failed:
        print(f"critest[{label}] FAILED: {name}")
    for name, why in outcome.skipped:
        print(f"critest[{label}] skipped: {name} ({why})")
    for pattern, why in NOT_RUN.items():
        print(f"critest[{label}] not run: {pattern} ({why})")
    bad_skips = outcome.bad_skips()
    for name, why in bad_skips:
        print(f"critest[{label}] SKIPPED BUT RUNNABLE HERE: {name} ({why})")
    n_pass, n_fail, n_skip = len(outcome.passed), len(outcome.failed), len(outcome.skipped)
    print(f"critest[{label}]: {n_pass} passed, {n_fail} failed, {n_skip} skipped")
    return not outcome.failed and not bad_skips and n_pass > 0


def print_benchmarks(directory: Path) -> None:
    """p50 and p90 of each operation in critest's benchmark result files (durations in ns per datapoint)."""
    for path in sorted(directory.glob("*.json")):
        results = json.loads(path.read_text())
        names, points = results.get("operationsNames") or [], results.get("datapoints") or []
        for i, name in enumerate(names):
            durations = sorted(
                p["operationsDurationsNs"][i] / 1e6 for p in points if len(p["operationsDurationsNs"]) > i
            )
            if durations:
                p50, p90 = durations[len(durations) // 2], durations[min(len(durations) - 1, len(durations) * 9 // 10)]
                print(f"critest benchmark {path.stem}: {name} p50 {p50:.1f} ms, p90 {p90:.1f} ms (n={len(durations)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handler", default="", help="runtime handler critest asks for (default: runc)")
    parser.add_argument("--parallel", type=int, default=1, help="critest -parallel N (ginkgo nodes)")
    parser.add_argument("--focus", default="", help="run only the specs matching this regex")
    parser.add_argument("--benchmark", action="store_true", help="run critest's benchmarks instead")
    parser.add_argument("--keep", type=Path, default=None, help="copy the daemon log and report here")
    args = parser.parse_args()
    if not CRITEST.exists():
        print(f"{CRITEST} is missing: run scripts/build-cri-tools (make critest does)", file=sys.stderr)
        return 2
    prepare()  # may fetch a Debian package once per machine: before leaving the host's network
    enter_private_netns()
    label = "-".join(filter(None, [args.handler or "runc", f"parallel{args.parallel}", args.benchmark * "bench"]))
    with Registry(auth="none") as registry:
        names = build_and_push(registry.host)
        print(f"critest[{label}]: {len(names)} images pushed to {registry.host}", flush=True)
        with moorage_node(registry.host) as daemon:
            report = daemon.dir / "critest" / "junit.xml"
            report.parent.mkdir()
            env = {**os.environ, "PATH": f"{TOOLS}:{os.environ['PATH']}"}  # -parallel runs ginkgo from PATH
            run = subprocess.run(critest_argv(daemon, args, report), env=env, cwd=report.parent, check=False)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(daemon.log_path, args.keep / f"daemon-{label}.log")
                for result in report.parent.iterdir():
                    shutil.copy(result, args.keep / f"{result.stem}-{label}{result.suffix}")
            if args.benchmark:
                print_benchmarks(report.parent)
                return run.returncode
            if not report.exists():
                print(f"critest[{label}]: no report; critest exited {run.returncode}")
                return 1
            return 0 if judge(label, read_report(report)) else 1


if __name__ == "__main__":
    sys.exit(main())
