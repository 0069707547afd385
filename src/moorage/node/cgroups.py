"""Cgroup drivers: where a pod's containers go in the cgroup tree, for the OCI spec and for reading stats.

The kubelet and the runtime must agree on one driver (RuntimeConfig reports ours):

- **cgroupfs**: the runtime writes the cgroup directories itself. A pod's ``cgroup_parent`` is a path such as
  ``/kubepods/burstable/pod<uid>``; a container's ``cgroupsPath`` is ``<parent>/<container id>``, on cgroup v1
  (the same relative path in every controller's hierarchy) and v2 alike.
- **systemd**: systemd owns the tree; the runtime asks it for a transient scope (runc/crun ``--systemd-cgroup``).
  ``cgroup_parent`` is a slice name (``kubepods-burstable-pod<uid>.slice``, what a kubelet on the systemd driver
  sends) and ``cgroupsPath`` is ``<slice>:moorage:<container id>``, which the OCI runtime turns into the scope
  ``moorage-<container id>.scope`` under that slice. A cgroupfs-style parent is converted the way the kubelet
  names slices (``/kubepods/burstable/pod1`` → ``kubepods-burstable-pod1.slice``), so a kubelet left on cgroupfs
  still gets one slice per pod.

systemd nests a slice under each of its dash-separated prefixes: ``a-b-c.slice`` lives at
``/a.slice/a-b.slice/a-b-c.slice`` — :func:`slice_dir` expands that, which is where stats are read. Under the
systemd driver crun (unlike runc) runs the container in a sub-cgroup ``container`` of its scope and applies the
limits there, since systemd lets the owner of a delegated scope manage only the cgroups below it:
:func:`leaf_dir` finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from moorage.errors import InvalidArgument

SCOPE_PREFIX = "moorage"
DEFAULT_CGROUPFS_PARENT = "/moorage"
DEFAULT_SLICE = "moorage.slice"
ROOT_SLICE = "-.slice"
CRUN_SUBGROUP = "container"
"""crun's default ``run.oci.systemd.subgroup``: the sub-cgroup of the scope the container runs in."""


class CgroupDriver(Protocol):
    """Where containers of a pod go; every path is relative to a hierarchy's root and starts with ``/``."""

    @property
    def name(self) -> str: ...

    @property
    def systemd(self) -> bool:
        """The OCI runtime gets ``--systemd-cgroup``."""
        ...

    def spec_path(self, parent: str, container_id: str) -> str:
        """The OCI ``linux.cgroupsPath`` of a container whose pod names ``parent`` (may be empty)."""
        ...

    def container_dir(self, parent: str, container_id: str) -> str:
        """The container's cgroup directory, relative to a hierarchy's root."""
        ...

    def pod_dir(self, parent: str) -> str | None:
        """The pod's own cgroup directory, or None when the pod named no parent (it shares the default one)."""
        ...


@dataclass(frozen=True)
class CgroupfsDriver:
    name: str = "cgroupfs"
    systemd: bool = False

    def spec_path(self, parent: str, container_id: str) -> str:
        return self.container_dir(parent, container_id)

    def container_dir(self, parent: str, container_id: str) -> str:
        return f"{_cgroupfs_parent(parent).rstrip('/')}/{container_id}"

    def pod_dir(self, parent: str) -> str | None:
        return _cgroupfs_parent(parent) if parent else None


@dataclass(frozen=True)
class SystemdDriver:
    name: str = "systemd"
    systemd: bool = True

    def spec_path(self, parent: str, container_id: str) -> str:
        return f"{to_slice(parent)}:{SCOPE_PREFIX}:{container_id}"

    def container_dir(self, parent: str, container_id: str) -> str:
        return f"{slice_dir(to_slice(parent)).rstrip('/')}/{SCOPE_PREFIX}-{container_id}.scope"

    def pod_dir(self, parent: str) -> str | None:
        return slice_dir(to_slice(parent)) if parent else None


def driver(name: str) -> CgroupDriver:
    if name == "systemd":
        return SystemdDriver()
    if name == "cgroupfs":
        return CgroupfsDriver()
    raise InvalidArgument(f"cgroup_driver must be cgroupfs or systemd, got {name!r}")


def _cgroupfs_parent(parent: str) -> str:
    if not parent:
        return DEFAULT_CGROUPFS_PARENT
    if parent.endswith(".slice") and "/" not in parent:
        # A kubelet on the systemd driver talking to a runtime on cgroupfs: keep the slice's tree position, so the
        # mismatch still yields one directory per pod (`moorage check` reports the mismatch itself).
        return slice_dir(parent)
    if not parent.startswith("/"):
        raise InvalidArgument(f"linux.cgroup_parent {parent!r}: a cgroupfs parent must be an absolute path")
    if any(part in (".", "..") for part in parent.split("/")):
        raise InvalidArgument(f"linux.cgroup_parent {parent!r}: '.' and '..' are not allowed")
    return parent


def to_slice(parent: str) -> str:
    """The systemd slice for a pod's ``cgroup_parent``: a slice name is kept, a cgroupfs path converted."""
    if not parent:
        return DEFAULT_SLICE
    if "/" not in parent:
        _check_slice(parent)
        return parent
    if any(part in (".", "..") for part in parent.split("/")):
        raise InvalidArgument(f"linux.cgroup_parent {parent!r}: '.' and '..' are not allowed")
    parts = [p for p in parent.split("/") if p]
    if not parts:
        return ROOT_SLICE
    if parent.endswith(".slice"):  # an expanded slice path: /kubepods.slice/kubepods-pod1.slice
        name = parts[-1]
        _check_slice(name)
        return name
    # The kubelet's cgroupName.ToSystemd: dashes inside a component become underscores, components join with "-".
    return "-".join(p.replace("-", "_") for p in parts) + ".slice"


def _check_slice(name: str) -> None:
    if name == ROOT_SLICE:
        return
    stem = name.removesuffix(".slice")
    if not name.endswith(".slice") or not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise InvalidArgument(
            f"linux.cgroup_parent {name!r}: not a systemd slice name (want e.g. kubepods-burstable-pod<uid>.slice)"
        )


def slice_dir(name: str) -> str:
    """The cgroup directory systemd gives slice ``name``: each dash-separated prefix is a parent slice."""
    if name == ROOT_SLICE:
        return "/"
    stem = name.removesuffix(".slice")
    parts = stem.split("-")
    return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def leaf_dir(container_dir: str, hierarchy: Path) -> str:
    """Where the container's processes and limits are: ``container_dir``, or its ``container`` sub-cgroup when
    the OCI runtime made one (crun under the systemd driver), looked up in ``hierarchy`` (a hierarchy's root)."""
    if container_dir.endswith(".scope") and (hierarchy / container_dir.lstrip("/") / CRUN_SUBGROUP).is_dir():
        return f"{container_dir}/{CRUN_SUBGROUP}"
    return container_dir
