"""What the runtime RPCs share: CRI views of the pod and container records, the List filters, and finding a
record by id or unique id prefix.

The kubelet relists every second and asks for each pod's status as it syncs it, so the views are built once
per version of a record, not per call: :class:`Views` keeps each record's CRI messages and their encoded
bytes (records are immutable; a changed one is a new object in the index), and the whole encoded list until
the index changes. Protobuf's wire format lets a response be the concatenation of its encoded fields, so a
List answer is a join of cached bytes and a Status answer is its cached status plus the timestamp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc

from moorage.api import validate
from moorage.cri import pb
from moorage.errors import NotFound
from moorage.runtime.containers import Containers, signals
from moorage.runtime.pods.sandboxes import Sandboxes
from moorage.runtime.spec import resources
from moorage.state.index import Index
from moorage.state.models import (
    CONTAINER_CREATED,
    CONTAINER_CREATING,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    READY,
    ContainerRecord,
    SandboxRecord,
)

Context = grpc.aio.ServicerContext[Any, Any]


def pod_status(record: SandboxRecord) -> pb.PodSandboxStatus:
    config = pb.PodSandboxConfig.FromString(record.config)
    return pb.PodSandboxStatus(
        id=record.id,
        metadata=config.metadata,
        state=pb.PodSandboxState.SANDBOX_READY if record.state == READY else pb.PodSandboxState.SANDBOX_NOTREADY,
        created_at=record.created_at,
        network=pb.PodSandboxNetworkStatus(
            ip=record.status.ips[0] if record.status.ips else "",
            additional_ips=[pb.PodIP(ip=ip) for ip in record.status.ips[1:]],
        ),
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(options=config.linux.security_context.namespace_options)
        ),
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=record.status.runtime_handler,
    )


CONTAINER_STATES = {
    CONTAINER_CREATING: pb.ContainerState.CONTAINER_UNKNOWN,
    CONTAINER_CREATED: pb.ContainerState.CONTAINER_CREATED,
    CONTAINER_RUNNING: pb.ContainerState.CONTAINER_RUNNING,
    CONTAINER_EXITED: pb.ContainerState.CONTAINER_EXITED,
}


def container_status(record: ContainerRecord) -> pb.ContainerStatus:
    config = pb.ContainerConfig.FromString(record.config)
    st = record.status
    return pb.ContainerStatus(
        id=record.id,
        metadata=config.metadata,
        state=CONTAINER_STATES[record.state],
        created_at=record.created_at,
        started_at=st.started_at,
        finished_at=st.finished_at,
        exit_code=st.exit_code,
        image=pb.ImageSpec(image=st.image, annotations=config.image.annotations),
        image_ref=record.image_id,  # the image id, as Kubernetes 1.36 requires (= Image.id)
        image_id=record.image_id,
        reason=st.reason,
        message=st.message,
        labels=config.labels,
        annotations=config.annotations,
        mounts=config.mounts,
        log_path=st.log_path,
        resources=pb.ContainerResources(  # what was last applied; a record older than that: its config's
            linux=resources.from_record(st.resources) if st.resources else config.linux.resources
        ),
        user=_user(st.user),
        stop_signal=signals.to_enum(st.stop_signal),  # the effective one: requested, else the image's, else SIGTERM
    )


def _user(user: dict[str, Any]) -> pb.ContainerUser | None:
    """The identity the first process started with (unknown for a record older than that: left unset)."""
    if not user:
        return None
    return pb.ContainerUser(
        linux=pb.LinuxContainerUser(
            uid=user["uid"], gid=user["gid"], supplemental_groups=user.get("additionalGids", [])
        )
    )


def matches(
    spec: pb.PodSandboxFilter | pb.ContainerFilter | pb.PodSandboxStatsFilter | pb.ContainerStatsFilter | None,
    item_id: str,
    status: pb.PodSandboxStatus | pb.ContainerStatus,
) -> bool:
    """The List filters: an id prefix, a state (not in the stats filters), labels that must all match (api.proto)."""
    if spec is None:
        return True
    if spec.id and not item_id.startswith(spec.id):
        return False
    if (
        isinstance(spec, (pb.PodSandboxFilter, pb.ContainerFilter))
        and spec.HasField("state")
        and status.state != spec.state.state
    ):
        return False
    return all(status.labels.get(k) == v for k, v in spec.label_selector.items())


class RecordLookup:
    """The pods and containers an RPC names, by full id or a unique prefix of one."""

    def __init__(self, sandboxes: Sandboxes, containers: Containers) -> None:
        self._sandboxes = sandboxes
        self._containers = containers

    async def _maybe(self, table: Any, ref: str, field: str) -> str | None:
        index = self._sandboxes.index if table == "sandboxes" else self._containers.index
        return index.resolve(validate.object_id(ref, field))

    async def _existing(self, table: Any, ref: str, field: str) -> str:
        found = await self._maybe(table, ref, field)
        if found is None:
            kind = "pod sandbox" if table == "sandboxes" else "container"
            raise NotFound(f"{kind} {ref!r} not found ({field})")
        return found


# --- cached views -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    record: SandboxRecord
    status: pb.PodSandboxStatus
    item: pb.PodSandbox
    status_field: bytes
    """``PodSandboxStatusResponse.status`` encoded: the response is this plus its other fields."""
    list_field: bytes
    """One ``ListPodSandboxResponse.items`` entry, encoded."""


@dataclass(frozen=True)
class ContainerView:
    record: ContainerRecord
    status: pb.ContainerStatus
    item: pb.Container
    status_field: bytes
    """``ContainerStatusResponse.status`` encoded."""
    list_field: bytes
    """One ``ListContainersResponse.containers`` entry, encoded."""


def pod_view(record: SandboxRecord) -> PodView:
    status = pod_status(record)
    item = pb.PodSandbox(
        id=record.id,
        metadata=status.metadata,
        state=status.state,
        created_at=record.created_at,
        labels=status.labels,
        annotations=status.annotations,
        runtime_handler=status.runtime_handler,
    )
    return PodView(
        record,
        status,
        item,
        pb.PodSandboxStatusResponse(status=status).SerializeToString(),
        pb.ListPodSandboxResponse(items=[item]).SerializeToString(),
    )


def container_view(record: ContainerRecord) -> ContainerView:
    status = container_status(record)
    item = pb.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox_id,
        metadata=status.metadata,
        image=status.image,
        image_ref=record.image_id,
        state=status.state,
        created_at=record.created_at,
        labels=status.labels,
        annotations=status.annotations,
        image_id=record.image_id,
    )
    return ContainerView(
        record,
        status,
        item,
        pb.ContainerStatusResponse(status=status).SerializeToString(),
        pb.ListContainersResponse(containers=[item]).SerializeToString(),
    )


class _Record(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> int: ...


class _View(Protocol):
    @property
    def record(self) -> Any: ...

    @property
    def list_field(self) -> bytes: ...


R = TypeVar("R", bound=_Record)
V = TypeVar("V", bound=_View)


class Views(Generic[R, V]):
    """The views of an index's records, each built once per record version; the whole list (and its encoded
    bytes) once per index generation. Cached messages are shared: callers never change them."""

    def __init__(self, index: Index[R], build: Callable[[R], V]) -> None:
        self._index = index
        self._build = build
        self._views: dict[str, V] = {}
        self._generation = -1
        self._all: list[V] = []
        self._encoded = b""

    def of(self, record: R) -> V:
        view = self._views.get(record.id)
        if view is None or view.record is not record:
            view = self._build(record)
            if len(self._views) > 2 * len(self._index) + 64:  # removed records never listed since: forget them
                self._views = {k: v for k, v in self._views.items() if self._index.get(k) is not None}
            self._views[record.id] = view
        return view

    def all(self) -> list[V]:
        """Every record's view, oldest first (the list is shared: do not change it)."""
        if self._generation != self._index.generation:
            current = [self.of(r) for r in self._index.all()]
            self._views = {v.record.id: v for v in current}
            self._all, self._encoded = current, b"".join(v.list_field for v in current)
            self._generation = self._index.generation
        return self._all

    def encoded(self) -> bytes:
        """The unfiltered List response, encoded."""
        self.all()
        return self._encoded


def unfiltered(spec: pb.PodSandboxFilter | pb.ContainerFilter | None) -> bool:
    """No filter, or an empty one (the kubelet's relist sends ``filter {}``)."""
    return spec is None or spec.ByteSize() == 0
