"""A real kubelet (build/kubelet/kubelet, Kubernetes v1.37) in standalone mode on a test's own moorage daemon.

Standalone: no API server, pods from static manifests in :attr:`Kubelet.manifests`, anonymous read-only
endpoints (``/pods``, ``/stats/summary``, ``/metrics``, ``/healthz``) on 127.0.0.1 of the suite's network
namespace. Every path is under one temp dir: root-dir, pod logs, manifests, certificates; its cgroups live under
a cgroup root of its own (``/moorage-test-kubelet-<hex>``, created in every hierarchy before it starts, removed
afterwards).

The kubelet runs in a mount namespace of its own (slave propagation: it sees the node's mounts, the node does
not see its own), where three things of the host are covered so that it changes nothing outside its temp dir:

- the kernel tunables it insists on (vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1, ...) are
  files holding those values bound over /proc/sys, and ``protectKernelDefaults`` makes it refuse rather than
  write, should a binding be missing;
- /var/log is a temp dir, for the /var/log/containers symlinks it makes at a fixed path.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.fixtures import cgroups
from tests.integration.daemon import unmount_under

CHECKOUT = Path(__file__).resolve().parents[2]
KUBELET = CHECKOUT / "build" / "kubelet" / "kubelet"
NODE_NAME = "moorage-node"
READ_ONLY_PORT = 10255
HEALTHZ_PORT = 10248
KERNEL_TUNABLES = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
"""What the kubelet's setupKernelTunables wants in /proc/sys (pkg/kubelet/cm/container_manager_linux.go)."""


class Kubelet:
    def __init__(self, endpoint: str, feature_gates: dict[str, bool], verbosity: int = 2) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="moorage-test-kubelet-", dir="/tmp"))
        self.root = self.dir / "root"
        self.manifests = self.dir / "manifests"
        self.pod_logs = self.dir / "pod-logs"
        self.config_path = self.dir / "kubelet.json"
        self.log_path = self.dir / "kubelet.log"
        self.cgroup_root = f"/moorage-test-kubelet-{secrets.token_hex(4)}"
        self.endpoint = endpoint
        self.feature_gates = feature_gates
        self.verbosity = verbosity
        self.proc: subprocess.Popen[bytes] | None = None
        for d in (self.root, self.manifests, self.pod_logs, self.dir / "var-log", self.dir / "sysctl"):
            d.mkdir(parents=True)

    def config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "staticPodPath": str(self.manifests),
            "fileCheckFrequency": "1s",
            "address": "127.0.0.1",
            "readOnlyPort": READ_ONLY_PORT,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": HEALTHZ_PORT,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": self.endpoint,
            "imageServiceEndpoint": self.endpoint,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": True,
            "failCgroupV1": False,
            "failSwapOn": False,
            "protectKernelDefaults": True,
            "resolvConf": "",
            "podLogsDir": str(self.pod_logs),
            "containerLogMaxSize": "1Mi",
            "containerLogMaxFiles": 5,
            "containerLogMonitorInterval": "3s",
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "featureGates": self.feature_gates,
        }

    def make_cgroup_root(self) -> None:
        """The kubelet refuses a cgroupRoot that does not exist: made in every hierarchy (cpuset's with its
        parent's cpus and mems, which a v1 cpuset cgroup starts without)."""
        for hierarchy in cgroups.hierarchies():
            own = hierarchy / self.cgroup_root.strip("/")
            own.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (own / name).exists():
                    (own / name).write_text((hierarchy / name).read_text())

    def start(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        binds = []
        for name, value in KERNEL_TUNABLES.items():
            fake = self.dir / "sysctl" / name.replace("/", ".")
            fake.write_text(value + "\n")
            binds.append(f"mount --bind {fake} /proc/sys/{name}")
        binds.append(f"mount --bind {self.dir / 'var-log'} /var/log")
        script = "set -eu\n" + "\n".join(binds) + '\nexec "$@"\n'
        argv = [str(KUBELET), f"--config={self.config_path}", f"--root-dir={self.root}"]
        argv += [f"--hostname-override={NODE_NAME}", f"--cert-dir={self.dir / 'pki'}", f"--v={self.verbosity}"]
        self.make_cgroup_root()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", script, "sh", *argv],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.wait_healthy(120)

    def get(self, path: str, port: int = READ_ONLY_PORT, timeout: float = 10) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return str(resp.read().decode())

    def healthz(self) -> str:
        """The kubelet's /healthz answer ("ok"), or the error that stood in its way."""
        try:
            return self.get("/healthz", HEALTHZ_PORT, timeout=5)
        except OSError as exc:
            return f"error: {exc}"

    def wait_healthy(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (answer := self.healthz()) != "ok":
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"kubelet exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kubelet not healthy in {seconds}s ({answer}):\n{self.log()[-4000:]}")
            time.sleep(0.5)

    def pods(self) -> dict[str, dict[str, Any]]:
        """The kubelet's /pods, by pod name (static pods are named ``<manifest name>-<node name>``)."""
        items = json.loads(self.get("/pods"))["items"] or []
        return {item["metadata"]["name"].removesuffix(f"-{NODE_NAME}"): item for item in items}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def write_manifest(self, pod: dict[str, Any]) -> Path:
        path = self.manifests / f"{pod['metadata']['name']}.json"
        tmp = path.with_name(f".{path.name}")  # the kubelet skips dot files: no half-written manifest is read
        tmp.write_text(json.dumps(pod))
        tmp.rename(path)
        return path

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def cleanup(self) -> None:
        """After the pods are gone: the kubelet stopped, its cgroups and its temp dir removed."""
        self.stop()
        cgroups.remove(self.cgroup_root, seconds=30)
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
