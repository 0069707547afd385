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
import errno
import os
import posixpath
import stat
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument, MoorageError
from moorage.node import idmap
from moorage.node.namespaces import IdMap, UserNamespace
from moorage.state.models import CREATING, READY, SandboxRecord

log = structlog.get_logger(__name__)

FIELD = "config.linux.security_context.namespace_options.userns_options"
MOUNTS_DIR = "mounts"
ID_LIMIT = (1 << 32) - 1
"""Host and container ranges end at or below it: (uid_t)-1 is no id, and the kernel refuses a uid_map line whose
``first + count`` does not fit 32 bits."""
MIN_LENGTH = 65536
"""The kubelet allocates a pod 65536 ids (``idsPerPod``: a multiple of it); critest asks for 100000."""


_support: dict[Path, asyncio.Future[idmap.Answer]] = {}


async def support(root: Path) -> str | None:
    """None when this node can run pods in user namespaces with the daemon's ``root`` (where the image layers
    are), else why not; probed once per root (:func:`moorage.node.idmap.answer`), the reason logged. Only the
    kernel's answer is kept: where the probe itself failed (a transient error), the next call probes again."""
    if root not in _support:
        _support[root] = asyncio.ensure_future(_probe(root))
    probing = _support[root]
    if probing.done() and not probing.cancelled() and probing.exception() is None and probing.result().definite:
        return probing.result().reason  # the kernel's answer, kept: Status asks for it every few seconds
    try:
        found = await asyncio.shield(probing)
    except Exception as exc:  # a bug in the probe: not an answer either
        found = idmap.Answer(f"the probe failed: {exc!r}", definite=False)
    if not found.definite and _support.get(root) is probing:
        del _support[root]
    return found.reason


async def _probe(root: Path) -> idmap.Answer:
    found = await asyncio.to_thread(idmap.answer, root / "idmap-probe")
    if found.reason is None:
        log.info("user namespaces for pods: supported (idmapped tmpfs, layers and overlays work)")
    elif found.definite:
        log.warning("user namespaces for pods: not supported on this node", reason=found.reason)
    else:
        log.warning(
            "user namespaces for pods: the node's probe failed; not offered, probed again at the next request",
            reason=found.reason,
        )
    return found


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
    """The maps of a pod that was run (its stored config, validated by RunPodSandbox when it was run: not again,
    so a pod run before a check was added keeps working)."""
    options = config.linux.security_context.namespace_options.userns_options
    if options.mode != pb.NamespaceMode.POD or not options.uids or not options.gids:
        return None
    u, g = options.uids[0], options.gids[0]
    return UserNamespace(IdMap(u.container_id, u.host_id, u.length), IdMap(g.container_id, g.host_id, g.length))


def _one(mappings: Sequence[pb.IDMapping], field: str) -> IdMap:
    if len(mappings) != 1:
        raise InvalidArgument(f"{field}: exactly one mapping is supported, got {len(mappings)}")
    m = mappings[0]
    if m.container_id != 0:
        raise InvalidArgument(f"{field}[0].container_id: container id 0 must be mapped, got {m.container_id}")
    if m.host_id == 0:
        raise InvalidArgument(f"{field}[0].host_id: 0 is the node's root; a pod's ids are an unprivileged range")
    if m.length < MIN_LENGTH:
        raise InvalidArgument(
            f"{field}[0].length: {m.length} ids; a pod's range is {MIN_LENGTH} ids or more (the kubelet gives "
            f"{MIN_LENGTH})"
        )
    if m.host_id + m.length > ID_LIMIT:
        raise InvalidArgument(
            f"{field}[0]: host ids {m.host_id}..{m.host_id + m.length - 1} do not stay inside 32-bit ids "
            f"(the last is {ID_LIMIT - 1})"
        )
    return IdMap(m.container_id, m.host_id, m.length)


_claimed: list[UserNamespace] = []
"""The maps of pods whose RunPodSandbox checked them and has not yet stored its record (:func:`claim`)."""


@contextlib.contextmanager
def claim(maps: UserNamespace | None, running: Iterable[SandboxRecord]) -> Iterator[None]:
    """FAILED_PRECONDITION, naming the other pod, when ``maps`` overlap the uid or gid range of a pod of
    ``running`` that is not stopped, or of a RunPodSandbox still storing its record; else hold ``maps`` claimed
    while the caller stores the new pod's record (then found in ``running``). The kubelet gives each pod a range of
    its own: two pods sharing host ids could signal, ptrace and own each other's files (a misconfiguration, or an
    attack). A stopped pod (NOTREADY) runs nothing: the kubelet's next sandbox for that pod takes its range."""
    if maps is None:
        yield
        return
    others = [(f"pod sandbox {r.id}", of_pod(pb.PodSandboxConfig.FromString(r.config))) for r in running
              if r.state in (CREATING, READY)]  # fmt: skip
    others += [("a pod sandbox being run", m) for m in _claimed]
    for who, other in others:
        if other is None:
            continue
        for kind, mine, theirs in (("uids", maps.uids, other.uids), ("gids", maps.gids, other.gids)):
            if mine.outside < theirs.outside + theirs.length and theirs.outside < mine.outside + mine.length:
                raise FailedPrecondition(
                    f"{FIELD}.{kind}[0]: host ids {mine.outside}..{mine.outside + mine.length - 1} overlap those of "
                    f"{who} ({theirs.outside}..{theirs.outside + theirs.length - 1}); each pod needs a range of its own"
                )
    _claimed.append(maps)
    try:
        yield
    finally:
        _claimed.remove(maps)


def oci_mappings(maps: UserNamespace) -> dict[str, list[dict[str, int]]]:
    """``linux.uidMappings`` and ``gidMappings`` of the pod's maps."""

    def entry(m: IdMap) -> dict[str, int]:
        return {"containerID": m.inside, "hostID": m.outside, "size": m.length}

    return {"uidMappings": [entry(maps.uids)], "gidMappings": [entry(maps.gids)]}


def mount_maps(mount: pb.Mount, index: int, pod_maps: UserNamespace) -> bool:
    """Whether CRI mount ``mounts[index]`` is idmapped (it has uid/gid mappings): then they must be ``pod_maps``,
    the pod's (the kubelet sends the pod's on each mount of such a pod), else INVALID_ARGUMENT naming the field;
    moorage idmaps a mount with the pod's user namespace only."""
    if not mount.uidMappings and not mount.gidMappings:
        return False
    field = f"config.mounts[{index}]"
    for name, mappings, pod in (("uidMappings", mount.uidMappings, pod_maps.uids),
                                ("gidMappings", mount.gidMappings, pod_maps.gids)):  # fmt: skip
        got = [(m.container_id, m.host_id, m.length) for m in mappings]
        if got != [(pod.inside, pod.outside, pod.length)]:
            shown = ", ".join(f"{c}:{h}:{n}" for c, h, n in got) or "none"
            raise InvalidArgument(
                f"{field}.{name}: {shown} differ from the pod's {pod.inside}:{pod.outside}:{pod.length} "
                "(container:host:length); a mount of a pod in a user namespace is idmapped with the pod's maps"
            )
    return True


def check_mounts(config: pb.ContainerConfig, pod_maps: UserNamespace) -> None:
    """:func:`mount_maps` for every mount of ``config``, before anything is made for the container."""
    for index, mount in enumerate(config.mounts):
        mount_maps(mount, index, pod_maps)


def check_container(config: pb.ContainerConfig, pod_maps: UserNamespace) -> None:
    """INVALID_ARGUMENT naming the field for a container of a pod in a user namespace that asks for the node's
    PID namespace (the pod cannot have it, :func:`validate`; a container of it no more: its processes would see and
    signal the node's, from a user namespace that owns nothing there), then :func:`check_mounts`."""
    if config.linux.security_context.namespace_options.pid == pb.NamespaceMode.NODE:
        raise InvalidArgument(
            "config.linux.security_context.namespace_options.pid: NODE (the node's PID namespace) is not allowed "
            f"for a container of a pod in a user namespace ({FIELD} is POD)"
        )
    check_mounts(config, pod_maps)


def check_readonly_locked(config: pb.ContainerConfig, spec: Mapping[str, Any], handler: str) -> None:
    """FAILED_PRECONDITION for a container with CAP_SYS_ADMIN and a read-only volume, on a runtime that binds
    volumes into the pod's user namespace without locking their read-only flag (crun): root could remount
    the volume read-write, as the host uid its mapping names. AppArmor's ``deny mount`` is no answer: it does not
    see mount_setattr(2), which clears the flag as well."""
    process = spec.get("process") or {}
    if "CAP_SYS_ADMIN" not in (process.get("capabilities") or {}).get("bounding", []):
        return
    for index, mount in enumerate(config.mounts):
        if mount.readonly:
            raise FailedPrecondition(
                f"config.mounts[{index}]: the read-only volume at {mount.container_path} would not stay read-only: "
                f"the container has CAP_SYS_ADMIN in a pod with a user namespace, and its runtime handler {handler!r} "
                "(crun) binds volumes there without locking the read-only flag; drop CAP_SYS_ADMIN or "
                "run the pod on a runc handler"
            )


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
    *,
    submounts_apart: bool = False,
    reserved: Collection[str] = (),
) -> None:
    """Bind each of ``config``'s mounts under ``<bundle>/mounts/<index>`` and point the mount there (idmapped with
    the pod's user namespace when it has mappings, which are then cleared: the runtime gets a plain bind). The
    mounts at ``mapped`` (image volumes: overlays over idmapped layers, which cannot be idmapped again) are bound
    as they are. With ``submounts_apart`` (a runtime that binds a volume into a user namespace without its
    submounts: crun), each filesystem mounted under a volume is bound at ``<bundle>/mounts/<index>.<n>`` too and
    added as a mount of its own (:func:`_submounts`); ``reserved``: the destinations the spec mounts besides the
    config's (/dev/pts, /dev/shm, /etc/hosts...), which such a mount may not replace. :func:`remove_mounts` undoes
    it, also after a failure half-way."""
    base = bundle / MOUNTS_DIR
    under: list[pb.Mount] = []
    taken = {posixpath.normpath(p) for p in reserved} | {posixpath.normpath(m.container_path) for m in config.mounts}
    for index, mount in enumerate(config.mounts):
        idmapped = mount_maps(mount, index, pod_maps) and index not in mapped
        if not mount.host_path:
            continue  # the spec refuses it, naming the field
        try:  # resolved once: what is bound is what this names now, not what a symlink swapped in later names
            source = os.open(mount.host_path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # the spec refuses it, naming the field
        except OSError as exc:
            raise InvalidArgument(f"config.mounts[{index}].host_path: {mount.host_path}: {exc.strerror}") from exc
        target = base / str(index)
        try:
            base.mkdir(mode=0o711, exist_ok=True)
            idmap.bind(source, target, pod_userns if idmapped else None, readonly=mount.readonly)
        except idmap.IdmapError as exc:
            cause = exc.__cause__
            if idmapped and isinstance(cause, OSError) and cause.errno == errno.EINVAL:
                raise FailedPrecondition(
                    f"config.mounts[{index}].host_path: {mount.host_path} cannot be idmapped, or a filesystem mounted "
                    f"under it cannot (the kernel idmaps the whole tree or nothing): {exc.message}"
                ) from exc
            raise MoorageError(f"config.mounts[{index}]: {exc.message}") from exc
        except MoorageError as exc:
            raise MoorageError(f"config.mounts[{index}]: {exc.message}") from exc
        finally:
            os.close(source)
        mount.host_path = str(target)
        del mount.uidMappings[:]
        del mount.gidMappings[:]
        if submounts_apart and target.is_dir():
            under += _submounts(mount, index, target, taken)
    config.mounts.extend(under)


def _submounts(mount: pb.Mount, index: int, target: Path, taken: Collection[str]) -> list[pb.Mount]:
    """A mount of its own for each filesystem mounted under the volume bound at ``target``, parents first, each
    bound beside it at ``<target>.<n>`` from a descriptor the kernel resolved beneath ``target`` with no symlink
    followed (a container writing to the volume cannot send the bind elsewhere). One that another mount would
    cover (a destination in ``taken`` below the volume's, at or above its own) is left out, as it would be
    hidden in the container anyway."""
    volume = posixpath.normpath(mount.container_path)
    inner = [t for t in taken if t.startswith(volume.rstrip("/") + "/")]
    found = []
    directory = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for n, relative in enumerate(idmap.visible_submounts(target)):
            destination = posixpath.normpath(posixpath.join(volume, relative))
            if any(destination == t or destination.startswith(t + "/") for t in inner):
                continue
            bound = target.with_name(f"{target.name}.{n}")
            try:
                source = idmap.open_beneath(directory, relative)
                try:
                    idmap.bind(source, bound, None, readonly=mount.readonly)
                finally:
                    os.close(source)
            except idmap.IdmapError as exc:
                raise FailedPrecondition(
                    f"config.mounts[{index}].host_path: {relative}, a filesystem mounted under it, cannot be bound "
                    f"for the container: {exc.message}"
                ) from exc
            sub = pb.Mount()
            sub.CopyFrom(mount)
            sub.container_path = destination
            sub.host_path = str(bound)
            found.append(sub)
    finally:
        os.close(directory)
    return found


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
