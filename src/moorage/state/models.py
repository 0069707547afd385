"""Pod sandbox records: what the store keeps of a pod, and the transitions a pod may make (pure, no I/O).

A pod's life::

    CREATING ──ready──▶ READY ──stop──▶ NOTREADY ──remove──▶ (gone)
        │                                    ▲
        └────── failed / crashed mid-way ────┘ (cleaned up at the next start, then removed)

CREATING exists only in the store, between the first write and the moment every resource is made; a pod
found CREATING at start-up was interrupted by a crash, and recovery undoes it. The kubelet sees CREATING
and NOTREADY both as SANDBOX_NOTREADY.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from moorage.errors import FailedPrecondition

CREATING, READY, NOTREADY = "CREATING", "READY", "NOTREADY"

TRANSITIONS = {
    CREATING: {READY, NOTREADY},
    READY: {NOTREADY},
    NOTREADY: {NOTREADY},
}

_NAME_PART = re.compile(r"[^A-Za-z0-9_.-]")


def pod_name(name: str, namespace: str, uid: str, attempt: int) -> str:
    """The unique name a pod attempt is reserved under, in the kubelet's own ``k8s_POD_...`` form."""
    return f"k8s_POD_{name}_{namespace}_{uid}_{attempt}"


@dataclass(frozen=True)
class SandboxStatus:
    """The mutable part of a pod, kept as JSON in the store."""

    namespaces: dict[str, str] = field(default_factory=dict)
    """OCI namespace type → pinned file ("network", "ipc", "uts"; "user" for a pod in a user namespace, which owns
    the others); absent types are the node's."""
    pid_mode: str = "CONTAINER"
    files: dict[str, str] = field(default_factory=dict)
    """Container path → host file: /etc/hostname, /etc/hosts, /etc/resolv.conf, /dev/shm."""
    runtime_handler: str = ""
    ips: list[str] = field(default_factory=list)
    stopped_at: int = 0
    infra_pid: int = 0
    """The pause process holding the pod's PID namespace (shareProcessNamespace pods only)."""
    resources: dict[str, Any] = field(default_factory=dict)
    """The last UpdatePodSandboxResources: {"overhead": ..., "resources": ...} (LinuxContainerResources as JSON)."""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SandboxStatus:
        doc: dict[str, Any] = json.loads(text or "{}")
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class SandboxRecord:
    id: str
    name: str
    state: str
    created_at: int
    config: bytes
    """The serialized runtime.v1.PodSandboxConfig, byte for byte as the kubelet sent it."""
    status: SandboxStatus

    def moved(self, state: str, **changes: Any) -> SandboxRecord:
        """This record in ``state``; FailedPrecondition if the pod may not go there from where it is."""
        if state not in TRANSITIONS[self.state]:
            raise FailedPrecondition(f"pod sandbox {self.id} is {self.state} and cannot become {state}")
        return replace(self, state=state, status=replace(self.status, **changes))


# --- containers -----------------------------------------------------------------------------------------------
#
#   CREATING ──created──▶ CREATED ──start──▶ RUNNING ──exit──▶ EXITED ──remove──▶ (gone)
#       │                    └──────── killed before start ─────▲
#       └── failed / crashed mid-way: undone ──▶ (gone)

CONTAINER_CREATING, CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED = "CREATING", "CREATED", "RUNNING", "EXITED"

CONTAINER_TRANSITIONS = {
    CONTAINER_CREATING: {CONTAINER_CREATED},
    CONTAINER_CREATED: {CONTAINER_RUNNING, CONTAINER_EXITED},
    CONTAINER_RUNNING: {CONTAINER_EXITED},
    CONTAINER_EXITED: set[str](),
}


def container_name(name: str, attempt: int, pod: str, namespace: str, uid: str) -> str:
    """The unique name of a container attempt, in the kubelet's ``k8s_<container>_<pod>_...`` form."""
    return f"k8s_{name}_{pod}_{namespace}_{uid}_{attempt}"


@dataclass(frozen=True)
class ContainerStatus:
    pid: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    log_path: str = ""
    image: str = ""
    """The image as the CreateContainer request named it."""
    stop_signal: str = ""
    """The signal StopContainer sends first: the config's, else the image's STOPSIGNAL; "" for SIGTERM."""
    resources: dict[str, Any] = field(default_factory=dict)
    """The Linux resources last applied (a CRI LinuxContainerResources as JSON): ContainerStatus.resources."""
    user: dict[str, Any] = field(default_factory=dict)
    """The identity the first process got (the spec's process.user: uid, gid, additionalGids): ContainerStatus.user."""
    image_volumes: list[str] = field(default_factory=list)
    """Ids of the images mounted as image volumes (CRI Mount.image): RemoveImage refuses them while listed."""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ContainerStatus:
        doc: dict[str, Any] = json.loads(text or "{}")
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str
    state: str
    created_at: int
    image_id: str
    config: bytes
    """The serialized runtime.v1.ContainerConfig, as the kubelet sent it."""
    status: ContainerStatus

    def moved(self, state: str, **changes: Any) -> ContainerRecord:
        if state not in CONTAINER_TRANSITIONS[self.state]:
            raise FailedPrecondition(f"container {self.id} is {self.state} and cannot become {state}")
        return replace(self, state=state, status=replace(self.status, **changes))
