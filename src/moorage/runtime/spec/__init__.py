"""The OCI runtime spec (config.json) of a CRI container: a pure function of the request and the image.

:func:`build` composes one fragment per concern, each in its own module:

==============  ===================================================================
module          spec fields
==============  ===================================================================
``process``     process.args, env, cwd, terminal, rlimits, oomScoreAdj
``user``        process.user (resolved against the image's /etc/passwd, /etc/group)
``security``    process.capabilities, linux.maskedPaths, linux.readonlyPaths
``apparmor``    process.apparmorProfile
``seccomp``     linux.seccomp
``mounts``      mounts, linux.rootfsPropagation
``devices``     linux.devices, the device part of linux.resources
``resources``   linux.resources
``cdi``         the edits of the CDI devices the container asks for (env, devices, mounts, hooks)
==============  ===================================================================

"Pure" means no side effects: it reads the container's rootfs (passwd, group), stats mount and device host paths
and reads Localhost seccomp profiles and CDI specs, but it writes nothing and starts nothing, so it is tested
without mocks. Whether an AppArmor profile is loaded is asked of ``SpecInputs.apparmor``; loading Moorage's
default profile is the caller's (:mod:`moorage.node.apparmor`).
Pod sysctls are not in the container spec: they are set on the pod's namespaces when those are created. SELinux
settings are not either: SELinux is off on Moorage's nodes (see :mod:`.security`).
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.cri import pb
from moorage.runtime.spec import apparmor, cdi, devices, mounts, process, resources, seccomp, security, user

OCI_VERSION = "1.0.2-dev"
CONTAINER_TYPE_ANNOTATION = "io.kubernetes.cri.container-type"
CONTAINER_NAME_ANNOTATION = "io.kubernetes.cri.container-name"
SANDBOX_NAME_ANNOTATION = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE_ANNOTATION = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID_ANNOTATION = "io.kubernetes.cri.sandbox-uid"

__all__ = ["OCI_VERSION", "SpecInputs", "build", "current_capabilities", "nofile_ceiling"]

current_capabilities = security.current_capabilities


@dataclass(frozen=True)
class SpecInputs:
    container: pb.ContainerConfig
    pod: pb.PodSandboxConfig
    # The OCI image config document's "config" object (Env, Entrypoint, Cmd, User, WorkingDir, StopSignal...).
    image_config: Mapping[str, Any]
    # The container's mounted root filesystem; /etc/passwd and /etc/group are read from it without escaping it.
    rootfs: Path
    # OCI namespace type -> path to join ("" = a new one); an omitted type is the host's. "mount" is always new.
    namespaces: Mapping[str, str]
    cgroups_path: str
    hostname: str
    # Container path -> host file or directory to bind: /etc/hosts, /etc/resolv.conf, /etc/hostname, /dev/shm.
    pod_files: Mapping[str, Path]
    # The daemon's own oom_score_adj: a lower request is raised to it.
    oom_score_adj_floor: int
    # Where relative Localhost seccomp profile references are looked up.
    seccomp_root: Path
    # The host's /dev, whose device nodes a privileged container gets (a parameter so tests can use a temp dir).
    host_dev: Path = field(default=Path("/dev"))
    # What "all capabilities" (privileged, add ALL) grants; security.current_capabilities() gives the daemon's.
    available_capabilities: tuple[str, ...] = security.ALL_CAPABILITIES
    # The highest RLIMIT_NOFILE the runtime can grant; None = no ceiling. :func:`nofile_ceiling` gives the daemon's.
    nofile_ceiling: int | None = None
    # A cgroup namespace of the container's own for unprivileged containers, as containerd and CRI-O give them on
    # cgroup v2: /sys/fs/cgroup and /proc/self/cgroup then show the container's cgroup as the root.
    cgroup_namespace: bool = False
    # Whether the pod's OCI runtime (and the kernel) can make a bind mount read-only recursively (its `rro` mount
    # option): Mount.recursive_read_only is refused without it.
    recursive_read_only: bool = False
    # The node has the hugetlb cgroup controller: hugepage limits are left out without it (as containerd does).
    hugetlb: bool = True
    # Where CDI spec files are read, a later directory winning (runtime.cdi_spec_dirs): only when the container
    # asks for a CDI device.
    cdi_spec_dirs: tuple[Path, ...] = ()
    # The node's AppArmor, None where it is off (then nothing is applied and a Localhost profile is refused).
    apparmor: apparmor.AppArmorHost | None = None


def nofile_ceiling() -> int | None:
    """The daemon's hard RLIMIT_NOFILE: without CAP_SYS_RESOURCE a container cannot get more."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def _namespaces(requested: Mapping[str, str]) -> list[dict[str, str]]:
    out = [{"type": "mount"}]
    for kind, path in requested.items():
        if kind == "mount":
            continue
        out.append({"type": kind, "path": path} if path else {"type": kind})
    return out


def _annotations(c: pb.ContainerConfig, pod: pb.PodSandboxConfig) -> dict[str, str]:
    """The CRI annotations verbatim, plus containerd's identification keys (the sandbox id is not known here)."""
    return {
        **c.annotations,
        CONTAINER_TYPE_ANNOTATION: "container",
        CONTAINER_NAME_ANNOTATION: c.metadata.name,
        SANDBOX_NAME_ANNOTATION: pod.metadata.name,
        SANDBOX_NAMESPACE_ANNOTATION: pod.metadata.namespace,
        SANDBOX_UID_ANNOTATION: pod.metadata.uid,
    }


def build(inputs: SpecInputs) -> dict[str, Any]:
    """The OCI runtime spec for ``inputs``; raises InvalidArgument (or Unimplemented) naming the bad field."""
    c = inputs.container
    sc = c.linux.security_context
    res = c.linux.resources
    name = c.metadata.name

    caps = security.capabilities(sc, inputs.available_capabilities)
    proc = process.build(
        container=c,
        image_config=inputs.image_config,
        hostname=inputs.hostname,
        user=user.resolve(sc, str(inputs.image_config.get("User") or ""), inputs.rootfs),
        capabilities=caps,
        no_new_privileges=bool(sc.no_new_privs),
        oom_score_adj_value=process.oom_score_adj(res, inputs.oom_score_adj_floor, name),
        nofile_ceiling=inputs.nofile_ceiling,
    )
    if (apparmor_profile := apparmor.select(sc, inputs.apparmor)) is not None:
        proc["apparmorProfile"] = apparmor_profile

    if sc.privileged:
        device_nodes = devices.host_devices(inputs.host_dev)
        device_rules: list[dict[str, Any]] = [{"allow": True, "access": "rwm"}]
    else:
        device_nodes, extra_rules = devices.cri_devices(c.devices)
        device_rules = [*devices.DEFAULT_DEVICE_RULES, *extra_rules]

    linux: dict[str, Any] = {
        "namespaces": _namespaces(
            {**inputs.namespaces, **({"cgroup": ""} if inputs.cgroup_namespace and not sc.privileged else {})}
        ),
        "cgroupsPath": inputs.cgroups_path,
        "resources": resources.build(res, device_rules, inputs.hugetlb),
        "devices": device_nodes,
        **security.linux_fragment(sc),
    }
    if propagation := mounts.rootfs_propagation(c.mounts):
        linux["rootfsPropagation"] = propagation
    if (profile := seccomp.select(sc, caps["bounding"], inputs.seccomp_root)) is not None:
        linux["seccomp"] = profile

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": proc,
        "root": {"path": str(inputs.rootfs), "readonly": bool(sc.readonly_rootfs)},
        "mounts": mounts.build(
            c.mounts, inputs.pod_files, bool(sc.privileged), bool(sc.readonly_rootfs), inputs.recursive_read_only
        ),
        "annotations": _annotations(c, inputs.pod),
        "linux": linux,
    }
    # runc refuses a hostname without a private UTS namespace; with the host's the container sees the host's name.
    if "uts" in inputs.namespaces:
        spec["hostname"] = inputs.hostname
    if names := cdi.requested((d.name for d in c.CDI_devices), c.annotations):
        cdi.apply(spec, cdi.resolve(names, inputs.cdi_spec_dirs))
    return spec
