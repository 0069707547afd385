"""Cgroup drivers: cgroupsPath for the OCI spec and the directories stats are read from."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.errors import InvalidArgument
from moorage.node.cgroupinfo import CgroupHost
from moorage.node.cgroups import CgroupfsDriver, SystemdDriver, driver, leaf_dir, slice_dir, to_slice

CID = "c0ffee"


def test_cgroupfs_nests_the_container_under_the_pod_parent() -> None:
    d = CgroupfsDriver()
    assert d.spec_path("/kubepods/burstable/pod1", CID) == "/kubepods/burstable/pod1/c0ffee"
    assert d.container_dir("/kubepods/burstable/pod1/", CID) == "/kubepods/burstable/pod1/c0ffee"
    assert d.pod_dir("/kubepods/burstable/pod1") == "/kubepods/burstable/pod1"


def test_cgroupfs_without_a_parent_uses_moorages_own() -> None:
    d = CgroupfsDriver()
    assert d.spec_path("", CID) == "/moorage/c0ffee"
    assert d.pod_dir("") is None


def test_cgroupfs_given_a_slice_keeps_its_tree_position() -> None:
    assert CgroupfsDriver().container_dir("kubepods-besteffort-pod1.slice", CID) == (
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/c0ffee"
    )


@pytest.mark.parametrize("parent", ["kubepods/pod1", "/kubepods/../etc", "/a/./b"])
def test_cgroupfs_refuses_relative_and_dot_parents(parent: str) -> None:
    with pytest.raises(InvalidArgument, match=r"linux\.cgroup_parent"):
        CgroupfsDriver().spec_path(parent, CID)


def test_systemd_puts_the_container_in_a_scope_of_the_pod_slice() -> None:
    d = SystemdDriver()
    parent = "kubepods-burstable-pod1.slice"
    assert d.spec_path(parent, CID) == "kubepods-burstable-pod1.slice:moorage:c0ffee"
    assert d.container_dir(parent, CID) == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/moorage-c0ffee.scope"
    )
    assert d.pod_dir(parent) == "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"


def test_systemd_without_a_parent_uses_moorage_slice() -> None:
    assert SystemdDriver().spec_path("", CID) == "moorage.slice:moorage:c0ffee"
    assert SystemdDriver().container_dir("", CID) == "/moorage.slice/moorage-c0ffee.scope"


@pytest.mark.parametrize(
    ("parent", "slice_name"),
    [
        ("/kubepods/burstable/pod1", "kubepods-burstable-pod1.slice"),
        ("/kubepods/pod-with-dashes", "kubepods-pod_with_dashes.slice"),  # as the kubelet escapes them
        ("/kubepods.slice/kubepods-pod1.slice", "kubepods-pod1.slice"),  # an expanded slice path
        ("/", "-.slice"),
        ("kubepods.slice", "kubepods.slice"),
    ],
)
def test_to_slice_converts_cgroupfs_parents(parent: str, slice_name: str) -> None:
    assert to_slice(parent) == slice_name


@pytest.mark.parametrize("parent", ["kubepods", "-kubepods.slice", "kube--pods.slice", ".slice"])
def test_to_slice_refuses_what_is_not_a_slice(parent: str) -> None:
    with pytest.raises(InvalidArgument, match="not a systemd slice name"):
        to_slice(parent)


def test_slice_dir_expands_each_dash_prefix() -> None:
    assert slice_dir("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert slice_dir("system.slice") == "/system.slice"
    assert slice_dir("-.slice") == "/"


def test_driver_by_name() -> None:
    assert driver("systemd").systemd
    assert not driver("cgroupfs").systemd
    with pytest.raises(InvalidArgument):
        driver("cgroupsv3")


def test_the_hybrid_cgroup2_mount_is_in_use_only_when_it_holds_controllers() -> None:
    v1 = {"memory": "/sys/fs/cgroup/memory"}
    unified = "/sys/fs/cgroup/unified"
    assert CgroupHost("hybrid", v1, unified, (), systemd=False).hybrid_v2_in_use is None  # crun accepts it
    assert CgroupHost("hybrid", v1, unified, ("hugetlb", "misc"), systemd=False).hybrid_v2_in_use == unified
    pure = CgroupHost("v2", {}, "/sys/fs/cgroup", ("cpu", "memory"), systemd=False)
    assert (pure.hybrid_v2_in_use, pure.unified) == (None, True)


def test_the_leaf_is_cruns_sub_cgroup_of_a_scope_when_there_is_one(tmp_path: Path) -> None:
    scope = "/pod.slice/moorage-c1.scope"
    (tmp_path / scope.lstrip("/")).mkdir(parents=True)
    assert leaf_dir(scope, tmp_path) == scope  # runc: the scope itself
    (tmp_path / scope.lstrip("/") / "container").mkdir()
    assert leaf_dir(scope, tmp_path) == f"{scope}/container"  # crun's default run.oci.systemd.subgroup
    (tmp_path / "moorage" / "c2" / "container").mkdir(parents=True)
    assert leaf_dir("/moorage/c2", tmp_path) == "/moorage/c2"  # cgroupfs: a container's own sub-cgroup is its own
