"""CRI RuntimeService: one short method per RPC, delegating to :mod:`moorage.runtime`.

RPCs not listed here answer UNIMPLEMENTED (see :mod:`moorage.api.handlers`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

import moorage
from moorage.api import validate
from moorage.api.cri import pb
from moorage.config import Config
from moorage.errors import NotFound, ResourceExhausted
from moorage.runtime import conditions
from moorage.runtime.containers import Containers
from moorage.runtime.events import Event, Overflow
from moorage.runtime.pod_cidr import PodCidr
from moorage.runtime.sandboxes import Sandboxes
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

CGROUP_DRIVERS = {"systemd": pb.CgroupDriver.SYSTEMD, "cgroupfs": pb.CgroupDriver.CGROUPFS}


STREAM_BATCH = 100


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
    )


def _matches(
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


class RuntimeService:
    def __init__(
        self,
        config: Callable[[], Config],
        pod_cidr: PodCidr,
        sandboxes: Sandboxes,
        containers: Containers,
    ) -> None:
        self._config = config
        self._pod_cidr = pod_cidr
        self._sandboxes = sandboxes
        self._containers = containers

    async def Version(self, request: pb.VersionRequest, context: Context) -> pb.VersionResponse:
        return pb.VersionResponse(
            version="0.1.0",  # the kubelet's CRI API version field: fixed by the protocol, not our release
            runtime_name="moorage",
            runtime_version=moorage.__version__,
            runtime_api_version="v1",
        )

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        config = self._config()
        ready, reason = await self._sandboxes.network.ready()
        network = conditions.Condition(
            conditions.NETWORK_READY, ready, "" if ready else "NetworkPluginNotReady", reason
        )
        conds = [conditions.runtime_condition(config), network]
        response = pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message) for c in conds
                ]
            ),
            runtime_handlers=[
                pb.RuntimeHandler(name=name, features=pb.RuntimeHandlerFeatures())
                for name in ("", *config.runtime.handlers)  # "" is the default handler, as the kubelet asks
            ],
            features=pb.RuntimeFeatures(),
        )
        if request.verbose:
            response.info.update(
                {
                    "config": json.dumps(config.to_dict()),
                    "podCIDR": json.dumps(list(self._pod_cidr.value)),
                    "version": json.dumps(moorage.__version__),
                }
            )
        return response

    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: Context) -> pb.RuntimeConfigResponse:
        driver = CGROUP_DRIVERS[self._config().cgroup_driver]
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: Context
    ) -> pb.UpdateRuntimeConfigResponse:
        await self._pod_cidr.update(request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()

    # Pods and containers: requests are validated now; running them comes with the pods issue. ----------

    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Context) -> pb.RunPodSandboxResponse:
        validate.present(request, "config", "RunPodSandboxRequest")
        validate.present(request.config, "metadata", "config")
        meta = request.config.metadata
        validate.name(meta.name, "config.metadata.name")
        validate.name(meta.namespace, "config.metadata.namespace")
        validate.name(meta.uid, "config.metadata.uid")
        sandbox_id = await self._sandboxes.run(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Context
    ) -> pb.PodSandboxStatusResponse:
        sandbox_id = await self._existing("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        record = await self._sandboxes.get(sandbox_id)
        response = pb.PodSandboxStatusResponse(status=pod_status(record), timestamp=time.time_ns())
        if request.verbose:
            network = await self._sandboxes.network_check(record)
            response.info["info"] = json.dumps(
                {"state": record.state, "name": record.name, **record.status.__dict__, "networkCheck": network},
                sort_keys=True,
            )
        return response

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Context
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        """Every pod and container change from now on, with the pod's status and its containers' at that time.
        A client that falls too far behind is cut off with RESOURCE_EXHAUSTED (it relists and subscribes again)."""
        with self._sandboxes.events.subscribe() as subscription:
            while True:
                try:
                    event = await subscription.next()
                except Overflow as exc:
                    raise ResourceExhausted(
                        f"container events: this stream {exc}; relist and subscribe again"
                    ) from None
                yield self._event_response(event)

    def _event_response(self, event: Event) -> pb.ContainerEventResponse:
        response = pb.ContainerEventResponse(
            container_id=event.container_id,
            container_event_type=event.kind,  # type: ignore[arg-type]
            created_at=event.at,
            containers_statuses=[
                container_status(r) for r in self._containers.index.all(lambda r: r.sandbox_id == event.sandbox_id)
            ],
        )
        sandbox = self._sandboxes.index.get(event.sandbox_id)
        if sandbox is not None:
            response.pod_sandbox_status.CopyFrom(pod_status(sandbox))
        return response

    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Context) -> pb.ListPodSandboxResponse:
        return pb.ListPodSandboxResponse(items=await self._pods(request.filter if request.HasField("filter") else None))

    async def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        items = await self._pods(request.filter if request.HasField("filter") else None)
        for start in range(0, len(items), STREAM_BATCH):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=items[start : start + STREAM_BATCH])

    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Context) -> pb.StopPodSandboxResponse:
        # api.proto: stopping a sandbox that does not exist (any more) is not an error.
        sandbox_id = await self._maybe("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        if sandbox_id is not None:
            for container in await self._containers.all(sandbox_id):
                await self._containers.stop(container.id, 0)
            await self._sandboxes.stop(sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Context
    ) -> pb.RemovePodSandboxResponse:
        # api.proto: removing a sandbox that does not exist is not an error; a running one is stopped first.
        sandbox_id = await self._maybe("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        if sandbox_id is not None:
            for container in await self._containers.all(sandbox_id):
                await self._containers.remove(container.id)
            await self._sandboxes.remove(sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def _pods(self, spec: pb.PodSandboxFilter | None) -> list[pb.PodSandbox]:
        out = []
        for record in await self._sandboxes.all():
            status = pod_status(record)
            if not _matches(spec, record.id, status):
                continue
            out.append(
                pb.PodSandbox(
                    id=record.id,
                    metadata=status.metadata,
                    state=status.state,
                    created_at=record.created_at,
                    labels=status.labels,
                    annotations=status.annotations,
                    runtime_handler=status.runtime_handler,
                )
            )
        return out

    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Context) -> pb.CreateContainerResponse:
        validate.object_id(request.pod_sandbox_id, "pod_sandbox_id")
        validate.present(request, "config", "CreateContainerRequest")
        validate.present(request.config, "metadata", "config")
        validate.name(request.config.metadata.name, "config.metadata.name")
        validate.required(request.config.image.image, "config.image.image")
        validate.relative_path(request.config.log_path, "config.log_path", "the pod's log_directory")
        sandbox_id = await self._existing("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        container_id = await self._containers.create(sandbox_id, request.config, request.sandbox_config)
        return pb.CreateContainerResponse(container_id=container_id)

    async def StartContainer(self, request: pb.StartContainerRequest, context: Context) -> pb.StartContainerResponse:
        await self._containers.start(await self._existing("containers", request.container_id, "container_id"))
        return pb.StartContainerResponse()

    async def StopContainer(self, request: pb.StopContainerRequest, context: Context) -> pb.StopContainerResponse:
        # api.proto: stopping a container that is gone or already stopped is not an error.
        container_id = await self._maybe("containers", request.container_id, "container_id")
        if container_id is not None:
            await self._containers.stop(container_id, max(request.timeout, 0))
        return pb.StopContainerResponse()

    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Context) -> pb.RemoveContainerResponse:
        # api.proto: removing a container that does not exist is not an error; a running one is killed.
        container_id = await self._maybe("containers", request.container_id, "container_id")
        if container_id is not None:
            await self._containers.remove(container_id)
        return pb.RemoveContainerResponse()

    async def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Context) -> pb.ContainerStatusResponse:
        record = await self._containers.get(await self._existing("containers", request.container_id, "container_id"))
        response = pb.ContainerStatusResponse(status=container_status(record))
        if request.verbose:
            response.info["info"] = json.dumps({"state": record.state, **record.status.__dict__}, sort_keys=True)
        return response

    async def ListContainers(self, request: pb.ListContainersRequest, context: Context) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(
            containers=await self._list_containers(request.filter if request.HasField("filter") else None)
        )

    async def StreamContainers(
        self, request: pb.StreamContainersRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        items = await self._list_containers(request.filter if request.HasField("filter") else None)
        for start in range(0, len(items), STREAM_BATCH):
            yield pb.StreamContainersResponse(containers=items[start : start + STREAM_BATCH])

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Context) -> pb.ExecSyncResponse:
        container_id = await self._existing("containers", request.container_id, "container_id")
        result = await self._containers.exec_sync(container_id, list(request.cmd), max(int(request.timeout), 0))
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Context
    ) -> pb.UpdateContainerResourcesResponse:
        container_id = await self._existing("containers", request.container_id, "container_id")
        await self._containers.update_resources(container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Context
    ) -> pb.ReopenContainerLogResponse:
        await self._containers.reopen_log(await self._existing("containers", request.container_id, "container_id"))
        return pb.ReopenContainerLogResponse()

    async def _list_containers(self, spec: pb.ContainerFilter | None) -> list[pb.Container]:
        out = []
        for record in await self._containers.all(spec.pod_sandbox_id if spec is not None else ""):
            status = container_status(record)
            if not _matches(spec, record.id, status):
                continue
            out.append(
                pb.Container(
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
            )
        return out

    # Stats: what the kubelet polls for its summary API and eviction. ------------------------------------------

    async def ContainerStats(self, request: pb.ContainerStatsRequest, context: Context) -> pb.ContainerStatsResponse:
        container_id = await self._existing("containers", request.container_id, "container_id")
        return pb.ContainerStatsResponse(stats=await self._containers.stats(container_id))

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Context
    ) -> pb.ListContainerStatsResponse:
        return pb.ListContainerStatsResponse(
            stats=await self._container_stats(request.filter if request.HasField("filter") else None)
        )

    async def PodSandboxStats(self, request: pb.PodSandboxStatsRequest, context: Context) -> pb.PodSandboxStatsResponse:
        sandbox_id = await self._existing("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        return pb.PodSandboxStatsResponse(stats=await self._containers.pod_stats(sandbox_id))

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Context
    ) -> pb.ListPodSandboxStatsResponse:
        return pb.ListPodSandboxStatsResponse(
            stats=await self._pod_stats(request.filter if request.HasField("filter") else None)
        )

    async def _container_stats(self, spec: pb.ContainerStatsFilter | None) -> list[pb.ContainerStats]:
        out = []
        for record in await self._containers.all(spec.pod_sandbox_id if spec is not None else ""):
            if _matches(spec, record.id, container_status(record)):
                with contextlib.suppress(NotFound):  # removed meanwhile
                    out.append(await self._containers.stats(record.id))
        return out

    async def _pod_stats(self, spec: pb.PodSandboxStatsFilter | None) -> list[pb.PodSandboxStats]:
        out = []
        for record in await self._sandboxes.all():
            if _matches(spec, record.id, pod_status(record)):
                with contextlib.suppress(NotFound):  # removed meanwhile
                    out.append(await self._containers.pod_stats(record.id))
        return out

    # ------------------------------------------------------------------------------------------------------

    async def _maybe(self, table: Any, ref: str, field: str) -> str | None:
        index = self._sandboxes.index if table == "sandboxes" else self._containers.index
        return index.resolve(validate.object_id(ref, field))

    async def _existing(self, table: Any, ref: str, field: str) -> str:
        found = await self._maybe(table, ref, field)
        if found is None:
            kind = "pod sandbox" if table == "sandboxes" else "container"
            raise NotFound(f"{kind} {ref!r} not found ({field})")
        return found
