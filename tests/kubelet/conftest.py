"""The kubelet suite's node: a registry with critest's images, a moorage daemon mirroring registry.k8s.io to it
with a CNI bridge of the suite's own subnet, and a real kubelet on that daemon. Run through
``make test-kubelet`` (tests/kubelet/run.py), which puts the whole run in a network namespace of its own."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from moorage.cli.client import CriClient
from moorage.cri import pb
from tests.critest.images import build_and_push
from tests.critest.run import cni_network, registries_conf
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess
from tests.kubelet.node import CHECKOUT, KUBELET, Kubelet
from tests.kubelet.run import NETNS_MARK


@dataclass
class Node:
    daemon: DaemonProcess
    kubelet: Kubelet


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.kubelet)


@pytest.fixture(scope="session", autouse=True)
def private_netns() -> None:
    started_in = os.environ.get(NETNS_MARK)
    if started_in is None or started_in == str(os.stat("/proc/self/ns/net").st_ino):
        pytest.exit("run the kubelet suite with `make test-kubelet` (python -m tests.kubelet.run)", returncode=2)
    if not KUBELET.exists():
        pytest.exit(f"{KUBELET} is missing: run `make kubelet`", returncode=2)
    os.system("ip link set lo up")


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    with Registry(auth="none") as reg:
        build_and_push(reg.host)
        yield reg.host


def wait_for(what: str, check: Callable[[], object], seconds: float = 90, every: float = 0.5) -> object:
    """Poll ``check`` until it returns something true (returned); fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, KeyError, IndexError, ValueError) as exc:
            last = exc  # not yet there: shown should the wait fail
        time.sleep(every)
    raise AssertionError(f"{what}: not within {seconds}s (last: {last!r})")


def ready_pods(client: CriClient) -> list[str]:
    return [p.id for p in client.list_pods() if p.state == pb.PodSandboxState.SANDBOX_READY]


@pytest.fixture(scope="module")
def node(registry: str, request: pytest.FixtureRequest) -> Iterator[Node]:
    """A daemon and a kubelet on it with the module's ``FEATURE_GATES``; afterwards every static pod's manifest is
    removed and the kubelet stops the pods (its garbage collector would remove them only a minute later: they are
    removed through the daemon), then the kubelet, the daemon and everything they made go."""
    gates: dict[str, bool] = getattr(request.module, "FEATURE_GATES", {})
    daemon = DaemonProcess('sandbox_image = "localhost/moorage/pause:1.0"\n')
    daemon.log_level = "info"
    kubelet = Kubelet(daemon.endpoint, gates, verbosity=getattr(request.module, "VERBOSITY", 2))
    try:
        daemon.registries_conf.write_text(registries_conf(registry))
        daemon.cni_dir.mkdir(exist_ok=True)
        (daemon.cni_dir / "10-kubelet.conflist").write_text(cni_network())
        daemon.start()
        kubelet.start()
        yield Node(daemon, kubelet)
    finally:
        for manifest in kubelet.manifests.iterdir():
            manifest.unlink()
        try:
            if kubelet.proc is not None and kubelet.proc.poll() is None and daemon.proc is not None:
                with daemon.client() as client:  # stopped by the kubelet; removed below, not after its GC period
                    wait_for("the kubelet stopping every pod", lambda: not ready_pods(client), seconds=120)
        finally:
            kubelet.stop()
            keep = CHECKOUT / "build" / "test-kubelet" / request.module.__name__.rsplit(".", 1)[-1]
            keep.mkdir(parents=True, exist_ok=True)  # the logs of the last run, for a failure's post-mortem
            shutil.copy(kubelet.log_path, keep / "kubelet.log")
            shutil.copy(daemon.log_path, keep / "daemon.log")
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.remove_all_pods()
            daemon.cleanup()
            kubelet.cleanup()
