"""RuntimeClass handlers → the OCI runtime that runs a pod's containers.

Each handler names a runc-compatible binary (``runtime.handlers.<name>.path``) and gets its own state root under
``<state>/runtime/<name>``. The cgroup driver decides ``--systemd-cgroup``.

One host quirk is handled here: crun (1.8 at least) refuses a *hybrid* cgroup host whose cgroup2 mount
(``/sys/fs/cgroup/unified``) still owns controllers — Debian's kernels put hugetlb, misc and rdma there when
no v1 hierarchy claims them — with "cgroups in hybrid mode not supported, drop all controllers from cgroupv2".
runc does not care. On such a host moorage runs crun through a small wrapper that enters a private mount
namespace, unmounts the cgroup2 mount there and execs crun, so crun sees a plain v1 host; the containers' own
cgroups, namespaces and mounts are unaffected. The wrapper is written once under ``<state>/wrappers`` and the
daemon logs that it is used.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import structlog

from moorage.config import Config
from moorage.errors import InvalidArgument
from moorage.node.cgroups import CgroupDriver
from moorage.observe.stats import CGROUP_ROOT
from moorage.runtime.conditions import find_binary
from moorage.runtime.oci import OciRuntime

log = structlog.get_logger(__name__)


class Handlers:
    def __init__(
        self, config: Callable[[], Config], state: Path, cgroups: CgroupDriver, cgroup_root: Path = CGROUP_ROOT
    ) -> None:
        self._config = config
        self._state = state
        self._cgroups = cgroups
        self._cgroup_root = cgroup_root
        self._paths: dict[str, str] = {}

    def runtime(self, handler: str) -> OciRuntime:
        """The runtime of ``handler`` ("" = the default handler)."""
        name = handler or self._config().runtime.default_handler
        handlers = self._config().runtime.handlers
        if name not in handlers:
            known = ", ".join(sorted(handlers))
            raise InvalidArgument(f"runtime_handler {name!r} is not configured (runtime.handlers has {known})")
        path = handlers[name].path
        if path not in self._paths:
            self._paths[path] = self._executable(name, path)
        return OciRuntime(self._paths[path], self._state / "runtime" / name, systemd_cgroup=self._cgroups.systemd)

    def _executable(self, name: str, path: str) -> str:
        binary = find_binary(path) or path
        unified = hybrid_cgroup2_mount(self._cgroup_root)
        if unified is None or not _is_crun(binary):
            return binary
        wrapper = self._state / "wrappers" / f"{name}-cgroup-v1"
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        script = (
            "#!/bin/sh\n"
            f"# moorage: run {binary} without the hybrid cgroup2 mount {unified} (see moorage.runtime.handlers)\n"
            f"exec {unshare} --mount --propagation private "
            f'/bin/sh -c \'umount {unified} && exec "$0" "$@"\' {binary} "$@"\n'
        )
        if not wrapper.exists() or wrapper.read_text() != script:
            tmp = wrapper.with_suffix(".tmp")
            tmp.write_text(script)
            tmp.chmod(0o755)
            tmp.rename(wrapper)
        log.warning(
            "crun refuses hybrid cgroup hosts whose cgroup2 mount holds controllers; running it without that mount",
            handler=name,
            runtime=binary,
            cgroup2_mount=str(unified),
            wrapper=str(wrapper),
        )
        return str(wrapper)


def hybrid_cgroup2_mount(cgroup_root: Path = CGROUP_ROOT) -> Path | None:
    """The cgroup2 mount of a hybrid host when it holds controllers (what crun refuses), else None."""
    unified = cgroup_root / "unified"
    if (cgroup_root / "cgroup.controllers").exists():
        return None  # pure cgroup v2
    try:
        controllers = (unified / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    return unified if controllers else None


def _is_crun(binary: str) -> bool:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.lstrip().startswith(b"crun")
