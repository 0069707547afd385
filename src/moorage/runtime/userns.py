"""User namespaces for pods (Kubernetes' ``hostUsers: false``), with OCI runtimes that cannot make idmapped mounts.

The kubelet asks for one in ``NamespaceOption.userns_options``: mode POD with one uid and one gid range (65536
ids from its allocator), mode NODE for none. It does so only on a runtime handler whose Status features report
``user_namespaces``, which moorage reports where :func:`moorage.node.idmap.probe_node` passes. How a pod gets
one:

- RunPodSandbox (:func:`validate`, then :mod:`moorage.runtime.pods.sandboxes`): the user namespace is made and pinned
  first, with the pod's maps, and the pod's net, IPC and UTS namespaces are made inside it, so they are owned by
  it (its root may set their sysctls and mount their sysfs and mqueue). /etc/hostname, /etc/hosts,
  /etc/resolv.conf and the /dev/shm tmpfs are owned by the pod's root on the host (host uid of container uid 0),
  as CRI-O does.
- CreateContainer (:mod:`moorage.runtime.containers.create`, :func:`prepare_mounts`): the container joins that
  user namespace by path, with the maps in ``linux.uidMappings``/``gidMappings`` too (runc 1.1 wants them even
  when joining). Its root is an overlay over idmapped binds of the image's layers
  (:mod:`moorage.runtime.containers.writable`).
  Every CRI mount is bound by moorage under ``<bundle>/mounts/<index>`` and the runtime binds that: idmapped when
  the mount has uid/gid mappings (with a user namespace of exactly those maps), else a plain recursive bind; an
  image volume is an overlay over idmapped layers already, bound as it is. The runtime opens mount sources as the
  container's root, which cannot pass the host's 0700 directories (the kubelet's pod volume directories); the
  bundle and the pod directory are 0711, and every directory above them must be searchable by others
  (:func:`check_reachable`).

Errors: a bad request is INVALID_ARGUMENT naming the field; a node that cannot do it is FAILED_PRECONDITION with
the probe's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument, MoorageError
from moorage.node import idmap, namespaces
from moorage.node.namespaces import IdMap, UserNamespace

log = structlog.get_logger(__name__)

FIELD = "config.linux.security_context.namespace_options.userns_options"
MOUNTS_DIR = "mounts"
MAX_ID = (1 << 32) - 1


_support: dict[Path, asyncio.Future[str | None]] = {}


async def support(root: Path) -> str | None:
    """None when this node can run pods in user namespaces with the daemon's ``root`` (where the image layers
    are), else why not; probed once per root (:func:`moorage.node.idmap.probe_node`), the reason logged."""
    if root not in _support:
        _support[root] = asyncio.ensure_future(_probe(root))
    return await asyncio.shield(_support[root])


async def _probe(root: Path) -> str | None:
    reason = await asyncio.to_thread(idmap.probe_node, root / "idmap-probe")
    if reason is None:
        log.info("user namespaces for pods: supported (idmapped tmpfs, layers and overlays work)")
    else:
        log.warning("user namespaces for pods: not supported on this node", reason=reason)
    return reason


def validate(config: pb.PodSandboxConfig) -> UserNamespace | None:
    """The pod's user namespace maps, None for the node's (mode NODE, or no options); INVALID_ARGUMENT naming the
    field for anything else than what the kubelet sends: one uid and one gid range mapping container id 0, mode
    POD, and a pod that shares no namespace with the node and is not privileged (Kubernetes refuses those too)."""
    sc = config.linux.security_context
    options = sc.namespace_options.userns_options
    if not sc.namespace_options.HasField("userns_options") or options.mode == pb.NamespaceMode.NODE:
        return None
    if options.mode != pb.NamespaceMode.POD:
        mode = pb.NamespaceMode.Name(options.mode)
        raise InvalidArgument(f"{FIELD}.mode: {mode} is not supported; a pod's user namespace is POD or NODE")
    maps = UserNamespace(_one(options.uids, f"{FIELD}.uids"), _one(options.gids, f"{FIELD}.gids"))
    modes = sc.namespace_options
    for name, shared in (("network", modes.network), ("pid", modes.pid), ("ipc", modes.ipc)):
        if shared == pb.NamespaceMode.NODE:
            raise InvalidArgument(
                f"{FIELD}: a pod in a user namespace cannot share the node's {name} namespace "
                f"(config.linux.security_context.namespace_options.{name} is NODE)"
            )
    if sc.privileged:
        raise InvalidArgument(f"{FIELD}: a privileged pod cannot run in a user namespace")
    return maps


def of_pod(config: pb.PodSandboxConfig) -> UserNamespace | None:
    """The maps of a pod that was run (its stored config, validated by RunPodSandbox)."""
    return validate(config)


def _one(mappings: Sequence[pb.IDMapping], field: str) -> IdMap:
    if len(mappings) != 1:
        raise InvalidArgument(f"{field}: exactly one mapping is supported, got {len(mappings)}")
    m = mappings[0]
    if m.container_id != 0:
        raise InvalidArgument(f"{field}[0].container_id: container id 0 must be mapped, got {m.container_id}")
    if m.length == 0 or m.host_id + m.length - 1 > MAX_ID:
        raise InvalidArgument(f"{field}[0]: host ids {m.host_id}+{m.length} are not a range of 32-bit ids")
    return IdMap(m.container_id, m.host_id, m.length)


def oci_mappings(maps: UserNamespace) -> dict[str, list[dict[str, int]]]:
    """``linux.uidMappings`` and ``gidMappings`` of the pod's maps."""

    def entry(m: IdMap) -> dict[str, int]:
        return {"containerID": m.inside, "hostID": m.outside, "size": m.length}

    return {"uidMappings": [entry(maps.uids)], "gidMappings": [entry(maps.gids)]}


def mount_maps(mount: pb.Mount, index: int) -> UserNamespace | None:
    """The maps of an idmapped CRI mount (``mounts[index]``), None for a plain one."""
    if not mount.uidMappings and not mount.gidMappings:
        return None
    field = f"config.mounts[{index}]"
    uids = _single(mount.uidMappings, f"{field}.uidMappings")
    gids = _single(mount.gidMappings, f"{field}.gidMappings")
    return UserNamespace(uids, gids)


def _single(mappings: Sequence[pb.IDMapping], field: str) -> IdMap:
    if len(mappings) != 1:
        raise InvalidArgument(f"{field}: exactly one mapping is supported, got {len(mappings)}")
    m = mappings[0]
    if m.length == 0 or max(m.host_id, m.container_id) + m.length - 1 > MAX_ID:
        raise InvalidArgument(f"{field}[0]: ids {m.container_id}/{m.host_id}+{m.length} are not 32-bit ranges")
    return IdMap(m.container_id, m.host_id, m.length)


def check_reachable(path: Path, gid: int | None = None) -> None:
    """FAILED_PRECONDITION naming the first directory above ``path`` that others (or group ``gid``, the host gid
    of the container's root) cannot search: the container's root (an unprivileged host uid) could not reach its
    root filesystem or mounts through it."""
    for parent in reversed(path.parents):
        st = os.stat(parent)
        mode = st.st_mode
        if not mode & stat.S_IXOTH and not (gid is not None and st.st_gid == gid and mode & stat.S_IXGRP):
            raise FailedPrecondition(
                f"{parent} (mode {stat.filemode(mode)}) is not searchable by others: a container in a user "
                f"namespace could not reach {path}; make it 0711 or 0755"
            )


def private_to_pod(directory: Path, maps: UserNamespace) -> None:
    """Make ``directory`` (a container's bundle, a pod's directory) searchable by the pod's root only: mode 0710,
    group the host gid of the pod's root. Others may not pass it to the rootfs, the volume binds, config.json or
    the pod's files below it."""
    os.chown(directory, 0, maps.host_gid(0))
    os.chmod(directory, 0o710)


def prepare_mounts(
    config: pb.ContainerConfig,
    bundle: Path,
    pod_userns: Path,
    pod_maps: UserNamespace,
    mapped: Collection[int] = (),
) -> None:
    """Bind each of ``config``'s mounts under ``<bundle>/mounts/<index>`` and point the mount there (idmapped
    when it has mappings, which are then cleared: the runtime gets a plain bind). The mounts at ``mapped`` (image
    volumes: overlays over idmapped layers, which cannot be idmapped again) are bound as they are.
    :func:`remove_mounts` undoes it, also after a failure half-way."""
    base = bundle / MOUNTS_DIR
    for index, mount in enumerate(config.mounts):
        maps = None if index in mapped else mount_maps(mount, index)
        if not mount.host_path or not os.path.exists(mount.host_path):
            continue  # the spec refuses it, naming the field
        base.mkdir(mode=0o711, exist_ok=True)
        target = base / str(index)
        source = Path(os.path.realpath(mount.host_path))
        try:
            with _userns_of(maps, pod_maps, pod_userns, bundle) as userns:
                idmap.bind(source, target, userns, readonly=mount.readonly)
        except MoorageError as exc:
            raise MoorageError(f"config.mounts[{index}]: {exc.message}") from exc
        mount.host_path = str(target)
        del mount.uidMappings[:]
        del mount.gidMappings[:]


@contextlib.contextmanager
def _userns_of(
    maps: UserNamespace | None, pod_maps: UserNamespace, pod_userns: Path, bundle: Path
) -> Iterator[Path | None]:
    """The user namespace to idmap a mount with: none, the pod's (same maps), or one of its own for the bind."""
    if maps is None:
        yield None
        return
    if maps == pod_maps:
        yield pod_userns
        return
    workdir = Path(tempfile.mkdtemp(prefix="userns-", dir=bundle))
    try:
        pinned = namespaces.pin(set(), workdir, userns=maps)
        try:
            yield pinned[namespaces.USER]
        finally:
            namespaces.unpin(pinned)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def remove_mounts(bundle: Path) -> None:
    """Unmount everything :func:`prepare_mounts` bound under ``bundle``; refuses to go on while anything is still
    mounted there (deleting the bundle would then delete the volume's files)."""
    base = bundle / MOUNTS_DIR
    if not base.is_dir():
        return
    for target in sorted(base.iterdir()):
        idmap.detach_all(target)
        try:  # never rmtree: a bind still there would be emptied; rmdir and unlink fail on it (EBUSY)
            target.rmdir() if target.is_dir() else target.unlink()
        except OSError as exc:
            raise MoorageError(f"cannot remove the container's volume bind {target}: {exc.strerror}") from exc
    base.rmdir()


def spec_fragment(maps: UserNamespace) -> dict[str, Any]:
    """What the spec's ``linux`` gets for a container of a pod in a user namespace."""
    return dict(oci_mappings(maps))
