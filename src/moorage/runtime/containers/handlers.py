"""RuntimeClass handlers → the OCI runtime that runs a pod's containers.

Each handler names a runc-compatible binary (``runtime.handlers.<name>.path``) and gets its own state root under
``<state>/runtime/<name>``. The cgroup driver decides ``--systemd-cgroup``.

One host quirk is handled here: crun (1.8 at least) refuses a *hybrid* cgroup host whose cgroup2 mount
(``/sys/fs/cgroup/unified``) still owns controllers — Debian's kernels put hugetlb, misc and rdma there when
no v1 hierarchy claims them — with "cgroups in hybrid mode not supported, drop all controllers from cgroupv2".
runc does not care. On such a host moorage runs crun through a small wrapper that enters a mount namespace of
its own, unmounts the cgroup2 mount there and execs crun, so crun sees a plain v1 host; the containers' own
cgroups, namespaces and mounts are unaffected. The wrapper is written once under ``<state>/wrappers`` and the
daemon logs that it is used.

That namespace keeps the host's mount propagation (``unshare --propagation unchanged``): a copy of a shared
mount stays in the host's peer group, so a container's rslave and rshared binds, cloned from it by crun,
still receive the host's later mounts (and, rshared, send theirs back), as they do under runc. A private
namespace (unshare's default) would cut them off. Only the cgroup2 mount's parent mount is made a slave there
first, so that the unmount stays inside the namespace instead of propagating to the host's cgroup2 mount.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from moorage.config import Config
from moorage.errors import InvalidArgument
from moorage.node import binaries
from moorage.node.cgroupinfo import CgroupHost, parse_mountinfo
from moorage.node.cgroups import CgroupDriver
from moorage.runtime import userns
from moorage.runtime.containers import oci_features
from moorage.runtime.containers.oci import OciRuntime
from moorage.runtime.containers.oci_features import OciFeatures

log = structlog.get_logger(__name__)


class Handlers:
    def __init__(self, config: Callable[[], Config], state: Path, cgroups: CgroupDriver, host: CgroupHost) -> None:
        self._config = config
        self._state = state
        self._cgroups = cgroups
        self._host = host
        self._paths: dict[str, str] = {}
        self._features: dict[str, asyncio.Future[OciFeatures]] = {}
        self._every: tuple[Config, str | None, list[tuple[str, OciFeatures]]] | None = None

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

    async def features(self, handler: str) -> OciFeatures:
        """What ``handler``'s OCI runtime supports ("" = the default handler), asked of it once per binary."""
        # Moorage makes the idmapped mounts and the runtime only joins the pod's user namespace, which runc 1.1 and
        # crun 1.8 can: whether pods may have one is the node's (its kernel's) answer.
        no_userns = await userns.support(Path(self._config().root))
        return dataclasses.replace(await self._oci_features(handler), user_namespaces=no_userns is None)

    async def every_features(self) -> list[tuple[str, OciFeatures]]:
        """Each handler's :meth:`features`, the default handler ("") first, as Status reports them. Kept until the
        config or the node's user namespace answer changes: a binary's are asked of it once anyway, and Status
        is asked every few seconds."""
        config = self._config()
        no_userns = await userns.support(Path(config.root))
        kept = self._every
        if kept is not None and kept[0] is config and kept[1] == no_userns:
            return kept[2]
        answers = [
            (name, dataclasses.replace(await self._oci_features(name), user_namespaces=no_userns is None))
            for name in ("", *config.runtime.handlers)
        ]
        self._every = (config, no_userns, answers)
        return answers

    async def _oci_features(self, handler: str) -> OciFeatures:
        path = self._resolved(handler)  # Status asks every few seconds: no thread hop once the binary is known
        if path is None:
            path = (await asyncio.to_thread(self.runtime, handler)).path  # the first call may run `crun --version`
        if path not in self._features:
            self._features[path] = asyncio.ensure_future(oci_features.probe(path))
        return await asyncio.shield(self._features[path])

    def _resolved(self, handler: str) -> str | None:
        """The binary :meth:`runtime` of ``handler`` runs, if known without looking for it (nor running it)."""
        config = self._config().runtime
        found = config.handlers.get(handler or config.default_handler)
        return None if found is None else self._paths.get(found.path)

    def _executable(self, name: str, path: str) -> str:
        binary = binaries.resolve(path)
        runnable = cgroup_compatible(binary, self._host, self._state / "wrappers" / f"{name}-cgroup-v1")
        if runnable != binary:
            log.warning(
                "crun refuses hybrid cgroup hosts whose cgroup2 mount holds controllers; running it without it",
                handler=name,
                runtime=binary,
                cgroup2_mount=self._host.hybrid_v2_in_use,
                wrapper=runnable,
            )
        return runnable


def cgroup_compatible(
    binary: str, host: CgroupHost, wrapper: Path, mountinfo: Path = Path("/proc/self/mountinfo")
) -> str:
    """``binary``, or for crun on a hybrid host whose cgroup2 mount holds controllers (which crun refuses) the
    path of ``wrapper``, written to run it without that mount (``mountinfo``: the mount table it is found in)."""
    unified = host.hybrid_v2_in_use
    if unified is None or not is_crun(binary):
        return binary
    points = [m.mount_point for m in parse_mountinfo(mountinfo.read_text())]
    write_hybrid_wrapper(binary, unified, parent_mount(unified, points), wrapper)
    return str(wrapper)


def parent_mount(path: str, mount_points: Iterable[str]) -> str:
    """The mount point of the mount ``path`` is mounted on: the longest other mount point above it."""
    above = [p for p in mount_points if p != path and (p == "/" or path.startswith(p.rstrip("/") + "/"))]
    return max(above, key=len, default="/")


def write_hybrid_wrapper(binary: str, cgroup2_mount: str, parent: str, wrapper: Path) -> None:
    """Write (atomically, and only when it changed) an executable ``wrapper`` that runs ``binary`` in a mount
    namespace of its own without the hybrid host's ``cgroup2_mount`` (mounted on ``parent``), where the host
    looks like plain cgroup v1 and every other mount keeps the host's propagation."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    mount = shutil.which("mount") or "/usr/bin/mount"
    umount = shutil.which("umount") or "/usr/bin/umount"
    inner = f'{mount} --make-rslave {shlex.quote(parent)} && {umount} {shlex.quote(cgroup2_mount)} && exec "$0" "$@"'
    script = (
        "#!/bin/sh\n"
        f"# moorage: run {binary} without the hybrid cgroup2 mount {cgroup2_mount}\n"
        "# (see moorage.runtime.containers.handlers).\n"
        "# The host's propagation is kept, so containers' rslave/rshared mounts stay in the host's peer groups;\n"
        f"# {parent} is made a slave first so the unmount does not propagate to the host.\n"
        f"exec {unshare} --mount --propagation unchanged /bin/sh -c {shlex.quote(inner)} {shlex.quote(binary)} "
        '"$@"\n'
    )
    if wrapper.exists() and wrapper.read_text() == script:
        return
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    tmp = wrapper.with_suffix(".tmp")
    tmp.write_text(script)
    tmp.chmod(0o755)
    os.replace(tmp, wrapper)


def is_crun(binary: str) -> bool:
    """Whether ``binary`` is crun (by its ``--version``)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.lstrip().startswith(b"crun")
