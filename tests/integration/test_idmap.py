"""The host mechanisms of user-namespaced pods, on the real kernel: a user namespace pinned with the pod's other
namespaces owned by it (C and Python helpers), idmapped binds, and the node's probe."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.node import idmap, namespaces, pin_helper, preflight
from moorage.node.namespaces import IdMap, UserNamespace

pytestmark = pytest.mark.integration

MAPS = UserNamespace(IdMap(0, 300000, 65536), IdMap(0, 400000, 65536))


@pytest.fixture(params=["pinns", "python"])
def helper(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The C helper when built, and the Python one (the C helper's path pointed at nothing)."""
    if request.param == "python":
        monkeypatch.setattr(pin_helper, "PINNS", tmp_path / "no-pinns")
    elif not os.access(pin_helper.PINNS, os.X_OK):
        pytest.skip("pinns is not built (make build/pinns/pinns)")
    return str(request.param)


@pytest.fixture
def pinned(helper: str, tmp_path: Path) -> Iterator[dict[str, Path]]:
    paths = namespaces.pin(
        {"net", "ipc", "uts"},
        tmp_path / "ns",
        hostname="pod-host",
        sysctls={"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"},
        userns=MAPS,
    )
    yield paths
    namespaces.unpin(paths)
    assert not any(namespaces.is_pinned(p) for p in paths.values())


def nsenter(pinned: dict[str, Path], script: str) -> str:
    argv = ["nsenter", f"--user={pinned['user']}", f"--net={pinned['net']}", f"--ipc={pinned['ipc']}"]
    argv += [f"--uts={pinned['uts']}", "sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_the_pods_namespaces_belong_to_its_pinned_user_namespace(pinned: dict[str, Path]) -> None:
    assert sorted(pinned) == ["ipc", "net", "user", "uts"]
    assert all(namespaces.is_pinned(p) for p in pinned.values())
    out = nsenter(
        pinned,
        "cat /proc/self/uid_map /proc/self/gid_map; hostname;"
        " cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced",
    )
    assert [line.split() for line in out.splitlines()] == [
        ["0", "300000", "65536"],
        ["0", "400000", "65536"],
        ["pod-host"],
        ["0"],
        ["1"],
    ]
    # Owned by it: its root (not the host's) may name the host of the UTS namespace, which setns checks.
    out = nsenter(pinned, "setpriv --reuid 0 --regid 0 --clear-groups hostname renamed && hostname")
    assert out == "renamed\n"


def test_an_idmapped_bind_shifts_owners_both_ways(pinned: dict[str, Path], tmp_path: Path) -> None:
    if (reason := idmap.probe_node(tmp_path / "probe")) is not None:
        pytest.skip(f"no idmapped mounts here: {reason}")
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    (source / "file").write_text("x")
    idmap.bind(source, target, pinned["user"])
    try:
        st = os.stat(target / "file")
        assert (st.st_uid, st.st_gid) == (300000, 400000)
        os.chown(target / "file", 300005, 400007)  # host root writes through the mapping: stored as 5:7
        st = os.stat(source / "file")
        assert (st.st_uid, st.st_gid) == (5, 7)
    finally:
        idmap.detach_all(target)
    assert not os.path.ismount(target)
    assert not (target / "file").exists()


def test_a_plain_bind_and_a_bind_of_a_file(tmp_path: Path) -> None:
    source = tmp_path / "file"
    source.write_text("content")
    target = tmp_path / "bound"
    idmap.bind(source, target, None)
    try:
        assert target.read_text() == "content"
    finally:
        idmap.detach_all(target)
    assert target.read_text() == ""  # the empty file the bind was made on


def test_the_probe_says_what_the_kernel_can_idmap(tmp_path: Path) -> None:
    """Linux 6.3+ idmaps tmpfs (the kubelet's projected volumes and secrets are tmpfs); ext4, xfs and btrfs
    before. This host (6.x, ext4): yes; the cgroup v2 guest (6.1, /tmp on tmpfs): no, for tmpfs."""
    found = idmap.answer(tmp_path / "probe")
    reason = found.reason
    assert found.definite, reason  # the kernel's answer, either way: kept for the daemon's life
    assert not (tmp_path / "probe").exists()
    release = tuple(int(part) for part in re.findall(r"\d+", os.uname().release)[:2])
    done = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True, check=True)
    fstype = done.stdout
    if release < (6, 3):
        assert reason is not None
        assert "idmapped mounts of tmpfs" in reason
    elif fstype.strip() in ("ext2/ext3", "xfs", "btrfs", "tmpfs"):
        assert reason is None


def test_moorage_check_reports_it_from_the_roots_filesystem(tmp_path: Path) -> None:
    """``moorage check`` probes where moorage's root is, or its nearest existing parent before the daemon made
    it, and leaves nothing there."""
    result = preflight.check_user_namespaces(tmp_path / "not-yet" / "root")
    expected = idmap.probe_node(tmp_path / "probe")
    assert result.name == "user namespaces"
    assert result.status == ("OK" if expected is None else "WARN")
    if expected is not None:
        assert expected.split(" (")[0] in result.detail
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_submounts_a_path_walk_sees_and_a_descriptor_beneath_that_follows_no_symlink(tmp_path: Path) -> None:
    """Under a bind: a tmpfs at ``a`` with one at ``a/b``, then a second tmpfs stacked at ``a`` (hiding the
    first and its ``b``) with ``c`` under it; ``d``'s tmpfs is mounted, then its directory made a symlink's
    target elsewhere. What a walk sees is ``a`` and ``a/c``; opening beneath refuses the symlink."""
    volume, bound = tmp_path / "volume", tmp_path / "bound"
    (volume / "a").mkdir(parents=True)
    mounted = []

    def tmpfs(path: Path) -> None:
        path.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)], check=True)
        mounted.append(path)

    try:
        tmpfs(volume / "a")
        tmpfs(volume / "a" / "b")
        tmpfs(volume / "a")
        tmpfs(volume / "a" / "c")
        (volume / "outside").mkdir()
        (volume / "link").symlink_to(volume / "outside")
        idmap.bind(volume, bound, None)
        mounted.append(bound)
        assert idmap.visible_submounts(bound) == ["a", "a/c"]
        directory = os.open(bound, os.O_PATH | os.O_DIRECTORY)
        try:
            os.close(idmap.open_beneath(directory, "a/c"))
            for escape in ("link", "../volume", "/etc"):
                with pytest.raises(idmap.IdmapError):
                    os.close(idmap.open_beneath(directory, escape))
        finally:
            os.close(directory)
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)
