"""The host's cgroup layout, read from mountinfo, and the kubelet's cgroup settings, read from its config file.

Three layouts exist; the kubelet (like runc) tells them apart by what is mounted *at* ``/sys/fs/cgroup``:

- **v2**: cgroup2 is mounted at the root itself (``stat -fc %T /sys/fs/cgroup`` says ``cgroup2fs``).
- **hybrid**: a tmpfs at the root with v1 controllers below it, plus cgroup2 at ``/sys/fs/cgroup/unified``
  (systemd's hybrid mode). The kubelet treats it as v1.
- **v1**: v1 controllers only.

Paths are parameters (youki's ``get_cgroup_setup_with_root``), so tests run against fake trees: ``proc_dir`` holds
``self/mountinfo``, ``sys_dir`` stands for ``/sys`` when reading ``cgroup.controllers``, ``run_dir`` for ``/run``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from moorage.errors import ConfigError, StartupError

CgroupMode = Literal["v1", "hybrid", "v2"]

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"

V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "debug",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)
"""Every controller a v1 hierarchy can carry; other super options (``name=systemd``, ``xattr``) are not ones."""

KUBELET_DEFAULT_CGROUP_DRIVER = "cgroupfs"
"""The kubelet's own default when its KubeletConfiguration names no ``cgroupDriver`` (kubeadm writes systemd)."""


class NoCgroupsError(StartupError):
    """No cgroup filesystem is mounted at or below the cgroup root."""


class KubeletConfigError(ConfigError):
    """A KubeletConfiguration file that cannot be read or does not hold valid cgroup settings."""


@dataclass(frozen=True)
class Mount:
    """One mountinfo line's fields that matter here."""

    mount_point: str
    fstype: str
    super_options: tuple[str, ...]
    mount_id: int = 0
    parent_id: int = 0


@dataclass(frozen=True)
class CgroupHost:
    """The node's cgroup layout and init system."""

    mode: CgroupMode
    v1_controllers: dict[str, str]  # controller name -> mount point, e.g. "memory" -> "/sys/fs/cgroup/memory"
    v2_mount: str | None  # /sys/fs/cgroup (v2) or /sys/fs/cgroup/unified (hybrid); None on pure v1
    v2_controllers: tuple[str, ...]  # the v2 root's cgroup.controllers; () without cgroup2
    systemd: bool  # systemd is the init system and running (sd_booted)

    @property
    def unified(self) -> bool:
        """Pure cgroup v2: one tree, whose controllers a parent enables for its children."""
        return self.mode == "v2"

    @property
    def hugetlb(self) -> bool:
        """The hugetlb controller is there for containers' hugepage limits (v1: a mounted hierarchy)."""
        return "hugetlb" in (self.v2_controllers if self.unified else self.v1_controllers)

    @property
    def hybrid_v2_in_use(self) -> str | None:
        """The cgroup2 mount of a hybrid host when it holds controllers (crun refuses such a host), else None."""
        return self.v2_mount if self.mode == "hybrid" and self.v2_controllers else None


@dataclass(frozen=True)
class KubeletSettings:
    """The cgroup settings of a KubeletConfiguration, with the kubelet's defaults for absent keys."""

    cgroup_driver: str  # "cgroupfs" or "systemd"
    fail_cgroup_v1: bool | None  # None: not set, the kubelet's default applies (true since Kubernetes 1.35)


# --- mountinfo ---------------------------------------------------------------------------------------------------


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash in paths as ``\\NNN`` octal."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in mount order; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 4:
            continue
        mounts.append(
            Mount(
                mount_point=_unescape(fields[4]),
                fstype=fields[sep + 1],
                super_options=tuple(fields[sep + 3].split(",")),
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
            )
        )
    return mounts


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def layout(
    mounts: list[Mount], cgroup_root: str = DEFAULT_CGROUP_ROOT
) -> tuple[CgroupMode, dict[str, str], str | None]:
    """(mode, v1 controller -> mount point, v2 mount point) from the cgroup mounts at or below ``cgroup_root``.

    A later mount on the same mount point hides an earlier one, as in the kernel.
    """
    visible: dict[str, Mount] = {}
    for mount in mounts:
        if _within(mount.mount_point, cgroup_root):
            visible[mount.mount_point] = mount
    root = visible.get(cgroup_root)
    if root is not None and root.fstype == "cgroup2":
        return "v2", {}, cgroup_root
    v1: dict[str, str] = {}
    v2_mount: str | None = None
    for mount in visible.values():
        if mount.fstype == "cgroup":
            for option in mount.super_options:
                if option in V1_CONTROLLERS:
                    v1.setdefault(option, mount.mount_point)
        elif mount.fstype == "cgroup2" and v2_mount is None:
            v2_mount = mount.mount_point
    if not v1 and v2_mount is None:
        raise NoCgroupsError(f"no cgroup filesystem is mounted at or below {cgroup_root}")
    if not v1:
        # cgroup2 below a non-cgroup root and no v1 controller: the kubelet sees v1 here and finds nothing to use.
        return "hybrid", {}, v2_mount
    return ("hybrid" if v2_mount else "v1"), v1, v2_mount


def _on_disk(host_path: str, sys_dir: Path) -> Path:
    """Where host path ``host_path`` is read when ``sys_dir`` stands for ``/sys``."""
    if _within(host_path, "/sys"):
        return sys_dir / host_path.removeprefix("/sys").lstrip("/")
    return Path(host_path)


def read_v2_controllers(v2_mount: str, sys_dir: Path = Path("/sys")) -> tuple[str, ...]:
    """The controllers listed in the v2 root's ``cgroup.controllers``; () when the file is missing."""
    try:
        return tuple(_on_disk(v2_mount, sys_dir).joinpath("cgroup.controllers").read_text().split())
    except FileNotFoundError:
        return ()


def systemd_running(run_dir: Path = Path("/run")) -> bool:
    """Whether systemd is the running init system: ``/run/systemd/system`` is a directory, as sd_booted(3) tests."""
    return (run_dir / "systemd" / "system").is_dir()


def detect(
    proc_dir: Path = Path("/proc"),
    sys_dir: Path = Path("/sys"),
    run_dir: Path = Path("/run"),
    cgroup_root: str = DEFAULT_CGROUP_ROOT,
) -> CgroupHost:
    """The host's cgroup layout from ``<proc_dir>/self/mountinfo``. Raises OSError, :class:`NoCgroupsError`."""
    mounts = parse_mountinfo((proc_dir / "self" / "mountinfo").read_text())
    mode, v1, v2_mount = layout(mounts, cgroup_root)
    return CgroupHost(
        mode=mode,
        v1_controllers=v1,
        v2_mount=v2_mount,
        v2_controllers=read_v2_controllers(v2_mount, sys_dir) if v2_mount else (),
        systemd=systemd_running(run_dir),
    )


# --- the kubelet's config ----------------------------------------------------------------------------------------


def parse_kubelet_config(text: str, source: str) -> KubeletSettings:
    """The cgroup settings of a KubeletConfiguration YAML text; ``source`` names it in errors."""
    import yaml  # noqa: PLC0415 - for moorage check only: the daemon does not import it to start

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeletConfigError(f"{source}: not valid YAML: {exc}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise KubeletConfigError(f"{source}: expected a KubeletConfiguration mapping, got {type(doc).__name__}")
    kind = doc.get("kind", "KubeletConfiguration")
    if kind != "KubeletConfiguration":
        raise KubeletConfigError(f"{source}: kind is {kind!r}, not KubeletConfiguration")
    driver = doc.get("cgroupDriver") or KUBELET_DEFAULT_CGROUP_DRIVER
    if driver not in ("cgroupfs", "systemd"):
        raise KubeletConfigError(f"{source}: cgroupDriver must be cgroupfs or systemd, got {driver!r}")
    fail_v1 = doc.get("failCgroupV1")
    if fail_v1 is not None and not isinstance(fail_v1, bool):
        raise KubeletConfigError(f"{source}: failCgroupV1 must be true or false, got {fail_v1!r}")
    return KubeletSettings(cgroup_driver=driver, fail_cgroup_v1=fail_v1)


def read_kubelet_config(path: Path) -> KubeletSettings:
    """The cgroup settings of the KubeletConfiguration file at ``path``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KubeletConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_kubelet_config(text, str(path))


def kubelet_cgroup_driver(path: Path) -> str:
    """The cgroup driver the kubelet configured by ``path`` uses (``cgroupfs`` when the file names none)."""
    return read_kubelet_config(path).cgroup_driver
