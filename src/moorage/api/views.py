"""What the runtime RPCs share: CRI views of the pod and container records, the List filters, and finding a
record by id or unique id prefix."""

from __future__ import annotations

from typing import Any

import grpc

from moorage.api import validate
from moorage.api.cri import pb
from moorage.errors import NotFound
from moorage.runtime import signals
from moorage.runtime.containers import Containers
from moorage.runtime.sandboxes import Sandboxes
from moorage.runtime.spec import resources
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
