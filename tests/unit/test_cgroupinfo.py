"""Cgroup layout detection from mountinfo samples and fake trees, the real host, and the kubelet's cgroup settings."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from moorage.node import cgroupinfo
from moorage.node.cgroupinfo import KubeletConfigError, NoCgroupsError, layout, parse_mountinfo

# CentOS 7: cpu and cpuacct co-mounted, a named systemd hierarchy, no cgroup2.
PURE_V1 = """\
22 43 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
25 22 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,\
release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,pids
32 25 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup \
rw,net_cls,net_prio
"""

# This machine's layout: v1 controllers one per hierarchy, cgroup2 at unified.
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# Debian 12 / Fedora: cgroup2 at the root, with a container's own cgroup mount elsewhere that must not count.
PURE_V2 = """\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
812 790 0:77 / /var/lib/moorage/rootfs/sys/fs/cgroup ro,nosuid - cgroup cgroup rw,memory
"""


def test_pure_v1_maps_each_controller_to_its_hierarchy() -> None:
    mode, v1, v2 = layout(parse_mountinfo(PURE_V1))
    assert mode == "v1"
    assert v2 is None
    assert v1["cpu"] == v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert v1["net_prio"] == "/sys/fs/cgroup/net_cls,net_prio"
    assert set(v1) == {"cpu", "cpuacct", "memory", "pids", "net_cls", "net_prio"}  # name=systemd is no controller


def test_hybrid_has_v1_controllers_and_cgroup2_at_unified() -> None:
    mode, v1, v2 = layout(parse_mountinfo(HYBRID))
    assert mode == "hybrid"
    assert v2 == "/sys/fs/cgroup/unified"
    assert v1["memory"] == "/sys/fs/cgroup/memory"
    assert set(v1) == {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"}


def test_pure_v2_ignores_cgroup_mounts_outside_the_root() -> None:
    assert layout(parse_mountinfo(PURE_V2)) == ("v2", {}, "/sys/fs/cgroup")


def test_a_later_mount_hides_an_earlier_one_on_the_same_point() -> None:
    text = HYBRID + "90 23 0:99 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert layout(parse_mountinfo(text))[0] == "v2"


def test_another_cgroup_root_can_be_given() -> None:
    text = "5 1 0:5 / /host/cgroup rw - cgroup2 cgroup2 rw\n"
    assert layout(parse_mountinfo(text), "/host/cgroup") == ("v2", {}, "/host/cgroup")


def test_no_cgroup_mounted_is_an_error_naming_the_root() -> None:
    with pytest.raises(NoCgroupsError, match="/sys/fs/cgroup"):
        layout(parse_mountinfo("24 29 0:22 / /sys rw - sysfs sysfs rw\n"))


def test_mount_points_are_unescaped_and_bad_lines_skipped() -> None:
    text = "garbage\n\n7 1 0:7 / /mnt/a\\040b rw - cgroup2 cgroup2 rw\n8 1 0:8 / /x rw shared:1\n"
    (mount,) = parse_mountinfo(text)
    assert mount.mount_point == "/mnt/a b"
    assert mount.fstype == "cgroup2"
    assert mount.super_options == ("rw",)


def _fake_host(tmp_path: Path, mountinfo: str, controllers: str | None, systemd: bool) -> tuple[Path, Path, Path]:
    proc, sys_dir, run = tmp_path / "proc", tmp_path / "sys", tmp_path / "run"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    run.mkdir()
    if systemd:
        (run / "systemd" / "system").mkdir(parents=True)
    if controllers is not None:
        root = sys_dir / "fs" / "cgroup"
        unified = root if "cgroup2 cgroup2" in mountinfo.splitlines()[1] else root / "unified"
        unified.mkdir(parents=True)
        (unified / "cgroup.controllers").write_text(controllers)
    return proc, sys_dir, run


def test_detect_reads_the_v2_controllers_under_the_given_sys(tmp_path: Path) -> None:
    proc, sys_dir, run = _fake_host(tmp_path, PURE_V2, "cpuset cpu io memory hugetlb pids rdma misc\n", True)
    host = cgroupinfo.detect(proc, sys_dir, run)
    assert host.mode == "v2"
    assert host.v2_controllers == ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
    assert host.systemd


def test_detect_hybrid_reads_unified_and_sees_no_systemd(tmp_path: Path) -> None:
    proc, sys_dir, run = _fake_host(tmp_path, HYBRID, "hugetlb\n", False)
    host = cgroupinfo.detect(proc, sys_dir, run)
    assert (host.mode, host.v2_mount, host.v2_controllers, host.systemd) == (
        "hybrid",
        "/sys/fs/cgroup/unified",
        ("hugetlb",),
        False,
    )


def test_detect_without_a_controllers_file_lists_none(tmp_path: Path) -> None:
    proc, sys_dir, run = _fake_host(tmp_path, PURE_V2, None, False)
    assert cgroupinfo.detect(proc, sys_dir, run).v2_controllers == ()


def test_systemd_running_needs_a_directory(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd" / "system").write_text("")
    assert not cgroupinfo.systemd_running(tmp_path)


def _fs_type(path: str) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=False).stdout.strip()


@pytest.mark.cgroup
def test_the_real_host_matches_what_the_filesystems_say() -> None:
    host = cgroupinfo.detect()
    assert host.systemd == Path("/run/systemd/system").is_dir()
    if _fs_type("/sys/fs/cgroup") == "cgroup2fs":  # a pure v2 guest (`make test-cgroupv2`)
        assert (host.mode, host.v2_mount) == ("v2", "/sys/fs/cgroup")
        assert "memory" in host.v2_controllers
    else:  # this machine: hybrid, memory at /sys/fs/cgroup/memory, cgroup2 at unified
        assert _fs_type("/sys/fs/cgroup/unified") == "cgroup2fs"
        assert (host.mode, host.v2_mount) == ("hybrid", "/sys/fs/cgroup/unified")
        assert host.v1_controllers["memory"] == "/sys/fs/cgroup/memory"
        assert host.v2_controllers == tuple(Path("/sys/fs/cgroup/unified/cgroup.controllers").read_text().split())


# --- the kubelet's config ----------------------------------------------------------------------------------------

KUBEADM_CONFIG = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
"""


def test_kubelet_driver_from_a_kubeadm_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(KUBEADM_CONFIG)
    assert cgroupinfo.kubelet_cgroup_driver(path) == "systemd"
    assert cgroupinfo.read_kubelet_config(path).fail_cgroup_v1 is None


@pytest.mark.parametrize("text", ["", "kind: KubeletConfiguration\n", "cgroupDriver: ''\n"])
def test_kubelet_driver_defaults_to_cgroupfs(text: str) -> None:
    assert cgroupinfo.parse_kubelet_config(text, "k.yaml").cgroup_driver == "cgroupfs"


def test_kubelet_fail_cgroup_v1_is_read() -> None:
    assert cgroupinfo.parse_kubelet_config("failCgroupV1: false\n", "k.yaml").fail_cgroup_v1 is False
    assert cgroupinfo.parse_kubelet_config("failCgroupV1: true\n", "k.yaml").fail_cgroup_v1 is True


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cgroupDriver: [x\n", "not valid YAML"),
        ("- a\n", "expected a KubeletConfiguration mapping"),
        ("kind: Pod\n", "kind is 'Pod', not KubeletConfiguration"),
        ("cgroupDriver: systemD\n", "cgroupDriver must be cgroupfs or systemd"),
        ("failCgroupV1: 'no'\n", "failCgroupV1 must be true or false"),
    ],
)
def test_bad_kubelet_configs_are_refused_naming_the_file(text: str, problem: str) -> None:
    with pytest.raises(KubeletConfigError, match=f"^k\\.yaml: {re.escape(problem)}"):
        cgroupinfo.parse_kubelet_config(text, "k.yaml")


def test_a_missing_kubelet_config_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(KubeletConfigError, match=r"nope\.yaml: cannot read"):
        cgroupinfo.read_kubelet_config(tmp_path / "nope.yaml")
