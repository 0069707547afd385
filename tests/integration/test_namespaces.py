"""Pinned pod namespaces against the real kernel: needs root (CAP_SYS_ADMIN), nsenter, ip, sysctl, hostname."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.errors import AlreadyExists, InvalidArgument
from moorage.node import namespaces as ns
from moorage.node import pin_helper
from moorage.node.sysctls import InvalidSysctl, sysctl_kind

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="pinning namespaces needs root"),
]

PORT_START = "net.ipv4.ip_unprivileged_port_start"
HOST_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def nsenter(kind: str, path: Path, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--{kind}={path}", *argv], check=True, capture_output=True, text=True).stdout


def nsfs_mounts_under(directory: Path) -> list[str]:
    """Mount points of nsfs mounts at or below ``directory``, from our mountinfo."""
    prefix = os.path.realpath(directory)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point = left.split()[4]
        if right.split()[0] == "nsfs" and (point == prefix or point.startswith(prefix + "/")):
            points.append(point)
    return points


def holders(inode: int) -> list[int]:
    """Pids of processes whose net namespace has this inode."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "ns/net").stat().st_ino == inode:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="session")
def pinns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C namespace helper, built for the tests (``make`` builds it into the source tree for the daemon)."""
    out = tmp_path_factory.mktemp("pinns") / "pinns"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([str(repo / "scripts" / "build-static"), str(repo / pin_helper.PINNS_SOURCE), str(out)], check=True)
    return out


@pytest.fixture(params=["pinns", "python"])
def pin_dir(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A pin directory, with each helper: the C one, and the Python one used where it is not built; whatever is
    still pinned in it is unpinned after the test."""
    helper = request.getfixturevalue("pinns") if request.param == "pinns" else tmp_path / "no-pinns"
    monkeypatch.setattr(pin_helper, "PINNS", helper)
    directory = tmp_path / "pins"
    try:
        yield directory
    finally:
        if directory.exists():
            ns.unpin(list(directory.iterdir()))


@pytest.fixture
def pod_port_start() -> str:
    """An ip_unprivileged_port_start value that differs from the host's."""
    return "0" if HOST_PORT_START.read_text().strip() != "0" else "80"


def test_pin_net_ipc_uts(pin_dir: Path, pod_port_start: str) -> None:
    host_value = HOST_PORT_START.read_text()
    paths = ns.pin(
        {"net", "ipc", "uts"},
        pin_dir,
        hostname="pod-web-0",
        sysctls={PORT_START: pod_port_start, "kernel.shmmni": "1024"},
    )

    assert paths == {kind: pin_dir / kind for kind in ("net", "ipc", "uts")}
    assert sorted(nsfs_mounts_under(pin_dir)) == sorted(str(p) for p in paths.values())
    assert all(ns.is_pinned(p) for p in paths.values())
    for kind, path in paths.items():
        assert path.stat().st_ino != Path(f"/proc/self/ns/{kind}").stat().st_ino, kind

    assert [line.split()[1] for line in nsenter("net", paths["net"], "ip", "-o", "link").splitlines()] == ["lo:"]
    assert "state UNKNOWN" in nsenter("net", paths["net"], "ip", "-o", "link", "show", "lo")  # up (lo has no carrier)
    assert "127.0.0.1/8" in nsenter("net", paths["net"], "ip", "-o", "addr", "show", "lo")
    assert nsenter("uts", paths["uts"], "hostname").strip() == "pod-web-0"
    assert nsenter("net", paths["net"], "sysctl", "-n", PORT_START).strip() == pod_port_start
    assert nsenter("ipc", paths["ipc"], "sysctl", "-n", "kernel.shmmni").strip() == "1024"
    assert HOST_PORT_START.read_text() == host_value

    # Only the bind mount holds the namespace: the helper is gone.
    assert holders(paths["net"].stat().st_ino) == []


def test_unpin_removes_mounts_and_files_and_is_idempotent(pin_dir: Path) -> None:
    paths = ns.pin({"net", "uts"}, pin_dir)
    ns.unpin(paths)
    assert nsfs_mounts_under(pin_dir) == []
    assert list(pin_dir.iterdir()) == []
    assert not any(ns.is_pinned(p) for p in paths.values())
    ns.unpin(paths)
    ns.unpin([pin_dir / "never-existed"])


def test_pinning_twice_is_refused(pin_dir: Path) -> None:
    ns.pin({"net"}, pin_dir)
    with pytest.raises(AlreadyExists, match="already pins a namespace"):
        ns.pin({"net"}, pin_dir)
    assert len(nsfs_mounts_under(pin_dir)) == 1


@pytest.mark.parametrize(
    ("sysctls", "message"),
    [
        ({"net.ipv4.no_such_key": "1"}, r"sysctl net\.ipv4\.no_such_key='1': no such key in this kernel"),
        ({PORT_START: "not-a-number"}, r"sysctl net\.ipv4\.ip_unprivileged_port_start=.*refused it: Invalid argument"),
        ({"kernel.pid_max": "1"}, r"sysctl kernel\.pid_max: not namespaced"),
        ({"kernel.msgmax": "1"}, r"sysctl kernel\.msgmax: lives in the ipc namespace, which this pod does not pin"),
        ({"net/../../kernel/x": "1"}, r"not a valid sysctl name"),
    ],
)
def test_bad_sysctl_fails_precisely_and_leaves_nothing(pin_dir: Path, sysctls: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSysctl, match=message):
        ns.pin({"net", "uts"}, pin_dir, sysctls=sysctls)
    assert nsfs_mounts_under(pin_dir.parent) == []
    assert not pin_dir.exists() or list(pin_dir.iterdir()) == []


def test_bad_hostname_and_kinds_are_refused(pin_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="needs a pinned uts namespace"):
        ns.pin({"net"}, pin_dir, hostname="h")
    with pytest.raises(InvalidArgument, match="1-64 bytes"):
        ns.pin({"uts"}, pin_dir, hostname="x" * 65)
    with pytest.raises(InvalidArgument, match="non-empty subset"):
        ns.pin(set(), pin_dir)
    assert nsfs_mounts_under(pin_dir.parent) == []


def test_slashed_sysctl_names_follow_sysctl8() -> None:
    assert sysctl_kind("net/ipv4/ip_forward") == "net"
    assert sysctl_kind("net.ipv4.conf.eth0/100.rp_filter") == "net"
    assert sysctl_kind("fs.mqueue.msg_max") == "ipc"
    assert sysctl_kind("kernel.sem") == "ipc"
    assert sysctl_kind("kernel.semx") is None
    assert sysctl_kind("vm.swappiness") is None


@pytest.fixture
def shared_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted with shared propagation; detached after the test."""
    mnt = tmp_path / "shared"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "moorage-test", str(mnt)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(mnt)], check=True)
        yield mnt
    finally:
        ns.unpin([p for p in (mnt / "pins").glob("*")] if (mnt / "pins").exists() else [])
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)


def test_pin_on_a_shared_mount(shared_tmpfs: Path) -> None:
    """nsfs bind mounts under a shared mount work here without making the directory private."""
    paths = ns.pin({"net"}, shared_tmpfs / "pins")
    assert nsfs_mounts_under(shared_tmpfs) == [str(paths["net"])]
    ns.unpin(paths)
    assert nsfs_mounts_under(shared_tmpfs) == []


def test_make_private_bind_mounts_directory_onto_itself(shared_tmpfs: Path) -> None:
    directory = shared_tmpfs / "private"
    directory.mkdir()
    ns.make_private(directory)
    try:
        lines = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f" {directory} " in line]
        assert len(lines) == 1
        assert "shared:" not in lines[0].partition(" - ")[0]
        ns.make_private(directory)  # already a mount point: only the propagation is set again
        assert sum(f" {directory} " in line for line in Path("/proc/self/mountinfo").read_text().splitlines()) == 1
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_failure_after_some_mounts_rolls_them_back(pin_dir: Path) -> None:
    """ipc and net are bound before uts fails (a directory is in its way): both are detached and removed."""
    (pin_dir / "uts").mkdir(parents=True)
    with pytest.raises(pin_helper.NamespaceError, match=r"create pin file .*/pins/uts: Is a directory"):
        ns.pin({"net", "ipc", "uts"}, pin_dir)
    assert nsfs_mounts_under(pin_dir) == []
    assert [p.name for p in pin_dir.iterdir()] == ["uts"]
    (pin_dir / "uts").rmdir()
