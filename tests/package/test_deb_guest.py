"""The Debian package on a node run by systemd (`make test-deb`): in the cgroup v2 guest, inside the namespace where
systemd is PID 1 (scripts/test-cgroupv2 with MOORAGE_VM_SYSTEMD=1). `dpkg -i` of build/deb's package,
`systemctl start moorage` (Type=notify: it returns once the socket answers), crictl info through the packaged
crictl.yaml, a pod with a container from a registry on the guest's loopback, an upgrade to the same package under a
higher version and a rollback, each restarting the daemon with the container still running (same PID, known to
the new daemon), then the pod removed and `apt-get remove` stopping
the daemon, leaving no moorage or conmon process, and `dpkg --purge` the conffile.

It never runs anywhere but in that guest, and installs only into throw-away places there: a writable overlay the
test lays over the guest's /usr (the host's, read-only over 9p), the guest's /etc and /var (virtme's overlays), a
tmpfs on /var/lib/moorage (overlayfs layers cannot sit on virtme's /var overlay); all undone after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import cgroups
from tests.fixtures import images as fixtures
from tests.fixtures.registry import Registry

CHECKOUT = Path(__file__).resolve().parents[2]
CRICTL = CHECKOUT / "build" / "cri-tools" / "crictl"
CRICTL_YAML = Path("/usr/share/doc/moorage/examples/crictl.yaml")  # the package's own
IN_GUEST = (
    os.environ.get("MOORAGE_VM_GUEST", "").startswith("guest:")
    and os.environ.get("MOORAGE_VM_SYSTEMD") == "1"
    and Path("/proc/1/comm").read_text().strip() == "systemd"
)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not IN_GUEST, reason="installs a package: only in the systemd guest (make test-deb)"),
]
UNIT = "moorage.service"
LOG = Path("/run/moorage-test-deb.log")
STATE = Path("/var/lib/moorage")
REGISTRIES_DROPIN = Path("/etc/containers/registries.conf.d/99-moorage-test-deb.conf")
UNIT_DROPIN = Path("/run/systemd/system/moorage.service.d/50-moorage-test-deb.conf")
# The guest's systemd runs a minimal target, not a booted system: DefaultDependencies=no keeps `systemctl start`
# from pulling in sysinit.target, whose systemd-tmpfiles-setup would empty /tmp (the /usr overlay's upper layer,
# the registry's storage). There is no journald: the daemon's log goes to a file. Its start takes ~30 s here.
# apt-get asks logind (over D-Bus) to delay a shutdown while dpkg runs; activating logind would pull in
# sysinit.target too, whose tmpfiles empty /tmp under the /usr overlay: it stays masked while the test runs.
LOGIND = "systemd-logind.service"
UNIT_DROPIN_TEXT = f"""[Unit]
DefaultDependencies=no
[Service]
TimeoutStartSec=300
StandardOutput=append:{LOG}
StandardError=inherit
"""


def run(*argv: str, timeout: float = 300) -> str:
    """Run ``argv``; on failure, raise with its output, the unit's status and the daemon's log."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        status = subprocess.run(["systemctl", "status", UNIT], capture_output=True, text=True, check=False).stdout
        log = LOG.read_text(errors="replace")[-4000:] if LOG.exists() else ""
        raise AssertionError(f"{argv} exited {out.returncode}:\n{out.stdout}\n{out.stderr}\n{status}\n{log}")
    return out.stdout


def quietly(*argv: str) -> None:
    """Run a clean-up step, whatever comes of it."""
    subprocess.run(argv, capture_output=True, timeout=300, check=False)


def crictl(*args: str) -> str:
    return run(str(CRICTL), "--config", str(CRICTL_YAML), *args, timeout=120)


def main_pid() -> int:
    return int(run("systemctl", "show", "-P", "MainPID", UNIT).strip())


def is_active() -> str:
    return subprocess.run(["systemctl", "is-active", UNIT], capture_output=True, text=True, check=False).stdout.strip()


def package_processes() -> list[str]:
    """The package's processes: its daemon (run from /usr/lib/moorage) and conmons."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(argv).decode(errors="replace")
        if "/usr/lib/moorage/" in line or "/usr/bin/moorage" in line or argv[0].endswith(b"conmon"):
            found.append(f"{proc.name}: {line[:120]}")
    return found


def no_package_processes(seconds: float = 30) -> list[str]:
    """Wait until the package has no process left; what is still there after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := package_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture
def node() -> Iterator[None]:
    """A writable /usr (an overlay with its upper layer on the guest's /tmp tmpfs), a tmpfs on /var/lib/moorage and
    the unit's drop-in for the guest; after: the daemon stopped, the package purged, everything unmounted."""
    work = Path(tempfile.mkdtemp(prefix="moorage-test-deb-", dir="/tmp"))
    (work / "upper").mkdir()
    (work / "work").mkdir()
    run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/usr,upperdir={work}/upper,workdir={work}/work", "/usr")
    STATE.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "tmpfs", str(STATE))
    UNIT_DROPIN.parent.mkdir(parents=True, exist_ok=True)
    UNIT_DROPIN.write_text(UNIT_DROPIN_TEXT)
    run("systemctl", "mask", "--runtime", LOGIND)
    REGISTRIES_DROPIN.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        quietly("systemctl", "stop", UNIT)
        for leftover in package_processes():  # a failed test's containers
            quietly("kill", "-9", leftover.split(":")[0])
        quietly("dpkg", "--purge", "moorage")
        UNIT_DROPIN.unlink(missing_ok=True)
        REGISTRIES_DROPIN.unlink(missing_ok=True)
        quietly("systemctl", "unmask", "--runtime", LOGIND)
        quietly("systemctl", "daemon-reload")
        quietly("umount", "-R", "-l", str(STATE))
        quietly("umount", "-l", "/usr")
        shutil.rmtree(work, ignore_errors=True)


def assert_still_running(cid: str, pid: int, step: object) -> None:
    after = json.loads(crictl("inspect", cid))
    assert after["status"]["state"] == "CONTAINER_RUNNING", step
    assert after["info"]["pid"] == pid
    assert (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))[:2] == [b"sleep", b"3600"]


def reversioned(deb: Path, version: str, work: Path) -> Path:
    """The same package under another version: what an upgrade (or a rollback) to it runs is the maintainer
    scripts' upgrade path."""
    tree = work / "reversioned"
    run("dpkg-deb", "-R", str(deb), str(tree))
    control = tree / "DEBIAN" / "control"
    control.write_text("".join(
        f"Version: {version}\n" if line.startswith("Version: ") else line
        for line in control.read_text().splitlines(keepends=True)
    ))  # fmt: skip
    out = work / f"moorage_{version}_amd64.deb"
    run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), str(out))
    shutil.rmtree(tree)
    return out


def test_install_start_run_restart_remove(node: None, tmp_path: Path) -> None:
    (deb,) = sorted((CHECKOUT / "build" / "deb").glob("moorage_*_amd64.deb"))
    run("dpkg", "-i", str(deb))
    assert "moorage" in os.listdir("/usr/lib/moorage/lib/python3.11/site-packages")
    assert run("systemctl", "is-enabled", UNIT).strip() == "enabled"
    assert is_active() == "inactive"  # enabled, not started: `moorage node setup` comes first on a real node

    with Registry() as registry:
        REGISTRIES_DROPIN.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        fixtures.push(registry, "test/busybox", "1", fixtures.image([fixtures.busybox_layer()]))
        image = f"{registry.host}/test/busybox:1"

        run("systemctl", "start", UNIT)
        # Type=notify: `systemctl start` returned, so the socket answers now, with no wait.
        assert is_active() == "active"
        info = json.loads(crictl("info"))
        conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
        assert conditions["RuntimeReady"] is True
        crictl("pull", image)

        with cgroups.pod_slice() as parent:
            pod = {
                "metadata": {"name": "deb", "namespace": "default", "uid": "deb-1"},
                "linux": {"cgroup_parent": parent, "security_context": {"namespace_options": {"network": 2}}},
            }
            container = {"metadata": {"name": "sleeper"}, "image": {"image": image}, "command": ["sleep", "3600"]}
            (tmp_path / "pod.json").write_text(json.dumps(pod))
            (tmp_path / "container.json").write_text(json.dumps(container))
            pod_id = crictl("runp", str(tmp_path / "pod.json")).strip()
            cid = crictl("create", pod_id, str(tmp_path / "container.json"), str(tmp_path / "pod.json")).strip()
            crictl("start", cid)
            # The pod's pause container ran from the image built from the package's own static pause helper.
            assert "localhost/moorage/pause" in crictl("images")
            before = json.loads(crictl("inspect", cid))
            assert before["status"]["state"] == "CONTAINER_RUNNING"
            pid = before["info"]["pid"]
            daemon = main_pid()

            # An upgrade and a rollback: postinst restarts a running daemon onto the package's code (systemctl
            # try-restart). KillMode=process: only the daemon goes; the container and its conmon stay, and each new
            # daemon knows them.
            installed = run("dpkg-query", "-W", "-f", "${Version}", "moorage")
            newer = reversioned(deb, f"{installed}+upgrade", tmp_path)
            steps = [["dpkg", "-i", str(newer)], ["dpkg", "-i", str(deb)]]
            for step, version in zip(steps, [f"{installed}+upgrade", installed], strict=True):
                run(*step)
                assert run("dpkg-query", "-W", "-f", "${Version}", "moorage") == version
                assert main_pid() not in (0, daemon), step
                assert not Path(f"/proc/{daemon}").exists()
                daemon = main_pid()
                assert_still_running(cid, pid, step)

            crictl("rmp", "--force", pod_id)
            assert not Path(f"/proc/{pid}").exists()
            assert json.loads(crictl("pods", "-o", "json"))["items"] == []

    # The package's prerm stops the daemon; the pod's conmons went with the pod.
    assert is_active() == "active"
    run("apt-get", "remove", "-y", "-q", "moorage", timeout=600)
    assert is_active() in ("inactive", "unknown")
    left = no_package_processes()
    assert not left, "left after apt-get remove:\n" + "\n".join(left)
    assert not Path("/usr/lib/moorage/bin").exists()
    assert not Path("/usr/bin/moorage").exists()
    assert Path("/etc/moorage/config.toml").exists()  # a conffile stays until purge
    run("dpkg", "--purge", "moorage")
    assert not Path("/etc/moorage/config.toml").exists()
