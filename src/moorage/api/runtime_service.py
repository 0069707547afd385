"""CRI RuntimeService: one short method per RPC, delegating to :mod:`moorage.runtime`.

The stats and metrics RPCs are in :mod:`moorage.api.stats_rpcs`; RPCs in neither answer UNIMPLEMENTED (see
:mod:`moorage.api.dispatch`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable

import moorage
from moorage.api import validate
from moorage.api.batching import batches
from moorage.api.stats_rpcs import StatsRpcs
from moorage.api.views import (
    ContainerView,
    Context,
    PodView,
    Views,
    container_view,
    matches,
    pod_view,
    unfiltered,
)
from moorage.config import Config
from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from moorage.runtime import conditions
from moorage.runtime.containers.oci_features import OciFeatures
from moorage.runtime.exec.execs import Execs
from moorage.runtime.pods import pod_resources
from moorage.runtime.pods.pod_cidr import PodCidr
from moorage.runtime.pods.sandboxes import Sandboxes
from moorage.runtime.spec import resources
from moorage.state.events import Event, Overflow
from moorage.state.models import CONTAINER_RUNNING, READY
from moorage.streaming.server import StreamingServer

_CONTAINERS_STATUSES_TAG = bytes([3 << 3 | 2])
"""``PodSandboxStatusResponse.containers_statuses``' tag: field 3, length-delimited."""

CGROUP_DRIVERS = {"systemd": pb.CgroupDriver.SYSTEMD, "cgroupfs": pb.CgroupDriver.CGROUPFS}


class RuntimeService(StatsRpcs):
    def __init__(
        self,
        config: Callable[[], Config],
        pod_cidr: PodCidr,
        sandboxes: Sandboxes,
        execs: Execs,
        streaming: StreamingServer,
    ) -> None:
        containers = sandboxes.containers
        super().__init__(sandboxes, containers)
        self._pod_views = Views(sandboxes.index, pod_view)
        self._container_views = Views(containers.index, container_view)
        self._statuses_by_pod: dict[str, bytes] = {}
        self._statuses_generation = -1
        self._config = config
        self._pod_cidr = pod_cidr
        self._streaming = streaming
        self._execs = execs
        self._runtime_condition = conditions.RuntimeCondition()

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
        conds = [self._runtime_condition(config), network]
        response = pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message) for c in conds
                ]
            ),
            runtime_handlers=[  # "" is the default handler, as the kubelet asks
                pb.RuntimeHandler(name=name, features=_handler_features(features))
                for name, features in await self._containers.handlers.every_features()
            ],
            features=pb.RuntimeFeatures(
                mount_options=True,  # noexec, nodev, nosuid on binds (spec/mounts.py)
                supplemental_groups_policy=True,  # Merge and Strict (spec/user.py), ContainerStatus.user
            ),
        )
        if request.verbose:
            response.info.update(
                {
                    "config": json.dumps(config.to_dict()),
                    "podCIDR": json.dumps(list(self._pod_cidr.value)),
                    "version": json.dumps(moorage.__version__),
                    "apparmor": json.dumps(self._containers.apparmor_status()),
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

    # Pods and containers: each request is validated here, then handed to its one owner in the runtime. ------

    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Context) -> pb.RunPodSandboxResponse:
        validate.present(request, "config", "RunPodSandboxRequest")
        validate.present(request.config, "metadata", "config")
        meta = request.config.metadata
        validate.name(meta.name, "config.metadata.name")
        validate.name(meta.namespace, "config.metadata.namespace")
        validate.name(meta.uid, "config.metadata.uid")
        validate.absolute_path(request.config.log_directory, "config.log_directory")
        validate.known_enums(request.config, "config")
        sandbox_id = await self._sandboxes.run(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest, context: Context) -> bytes:
        """Encoded: the pod's cached status, then this call's timestamp with its containers' statuses (and
        verbose info). A response with a timestamp must carry containers_statuses: the kubelet's Evented PLEG
        then takes them as the pod's containers, and without them starts the pod's containers again and again."""
        sandbox_id = await self._existing("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        record = await self._sandboxes.get(sandbox_id)
        rest = pb.PodSandboxStatusResponse(timestamp=time.time_ns())
        if request.verbose:
            network = await self._sandboxes.network_check(record)  # the last CNI CHECK's, not waited for
            rest.info["info"] = json.dumps(
                {"state": record.state, "name": record.name, **record.status.__dict__, "networkCheck": network.result,
                 "networkCheckedAt": network.at},
                sort_keys=True,
            )  # fmt: skip
        return (
            self._pod_views.of(record).status_field + self._encoded_statuses_in(sandbox_id) + rest.SerializeToString()
        )

    def _encoded_statuses_in(self, sandbox_id: str) -> bytes:
        """The pod's containers' cached statuses as ``PodSandboxStatusResponse.containers_statuses`` entries,
        encoded; every pod's are grouped once per change of the containers' index, not per call."""
        generation = self._containers.index.generation
        if self._statuses_generation != generation:
            grouped: dict[str, list[bytes]] = {}
            for view in self._container_views.all():  # oldest first, as _statuses_in
                # ContainerStatusResponse.status (field 1) and containers_statuses (field 3) are both a length-
                # delimited ContainerStatus: the same bytes under the other field's tag.
                grouped.setdefault(view.record.sandbox_id, []).append(_CONTAINERS_STATUSES_TAG + view.status_field[1:])
            self._statuses_by_pod = {pod: b"".join(entries) for pod, entries in grouped.items()}
            self._statuses_generation = generation
        return self._statuses_by_pod.get(sandbox_id, b"")

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Context
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        """Every pod and container change from now on, with the pod's status and its containers' at that time.
        A client that falls too far behind is cut off with RESOURCE_EXHAUSTED (it relists and subscribes again)."""
        with self._sandboxes.records.bus.subscribe() as subscription:
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
            containers_statuses=self._statuses_in(event.sandbox_id),
        )
        sandbox = self._sandboxes.index.get(event.sandbox_id)
        if sandbox is not None:
            response.pod_sandbox_status.CopyFrom(self._pod_views.of(sandbox).status)
        return response

    def _statuses_in(self, sandbox_id: str) -> list[pb.ContainerStatus]:
        """The cached statuses of the pod's containers."""
        return [
            self._container_views.of(r).status for r in self._containers.index.all(lambda r: r.sandbox_id == sandbox_id)
        ]

    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Context) -> bytes:
        """Encoded: the kubelet's relist (no filter, or an empty one) is answered from the cached list."""
        spec = request.filter if request.HasField("filter") else None
        if unfiltered(spec):
            return self._pod_views.encoded()
        return b"".join(v.list_field for v in self._pods(spec))

    async def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        items = [v.item for v in self._pods(request.filter if request.HasField("filter") else None)]
        for batch in batches(items):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=batch)

    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Context) -> pb.StopPodSandboxResponse:
        # api.proto: stopping a sandbox that does not exist (any more) is not an error.
        sandbox_id = await self._maybe("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        if sandbox_id is not None:
            await self._sandboxes.stop(sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Context
    ) -> pb.RemovePodSandboxResponse:
        # api.proto: removing a sandbox that does not exist is not an error; a running one is stopped first.
        sandbox_id = await self._maybe("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        if sandbox_id is not None:
            await self._sandboxes.remove(sandbox_id)
        return pb.RemovePodSandboxResponse()

    def _pods(self, spec: pb.PodSandboxFilter | None) -> list[PodView]:
        return [v for v in self._pod_views.all() if matches(spec, v.record.id, v.status)]

    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Context) -> pb.CreateContainerResponse:
        validate.object_id(request.pod_sandbox_id, "pod_sandbox_id")
        validate.present(request, "config", "CreateContainerRequest")
        validate.present(request.config, "metadata", "config")
        validate.name(request.config.metadata.name, "config.metadata.name")
        validate.required(request.config.image.image, "config.image.image")
        validate.relative_path(request.config.log_path, "config.log_path", "the pod's log_directory")
        resources.check(request.config.linux.resources, "config.linux.resources")
        validate.known_enums(request.config, "config")
        sandbox_id = await self._existing("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        container_id = await self._containers.create(sandbox_id, request.config)  # the pod's stored config is used
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

    async def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Context) -> bytes:
        """Encoded: the container's cached status (and verbose info)."""
        record = await self._containers.get(await self._existing("containers", request.container_id, "container_id"))
        encoded = self._container_views.of(record).status_field
        if request.verbose:
            info = {"info": json.dumps({"state": record.state, **record.status.__dict__}, sort_keys=True)}
            encoded += pb.ContainerStatusResponse(info=info).SerializeToString()
        return encoded

    async def ListContainers(self, request: pb.ListContainersRequest, context: Context) -> bytes:
        """Encoded: the kubelet's relist (no filter, or an empty one) is answered from the cached list."""
        spec = request.filter if request.HasField("filter") else None
        if unfiltered(spec):
            return self._container_views.encoded()
        return b"".join(v.list_field for v in self._list_containers(spec))

    async def StreamContainers(
        self, request: pb.StreamContainersRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        items = [v.item for v in self._list_containers(request.filter if request.HasField("filter") else None)]
        for batch in batches(items):
            yield pb.StreamContainersResponse(containers=batch)

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Context) -> pb.ExecSyncResponse:
        container_id = await self._existing("containers", request.container_id, "container_id")
        result = await self._execs.exec_sync(container_id, list(request.cmd), max(int(request.timeout), 0))
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    # Streaming: the RPC answers a URL of the streaming server, where the client connects to run it. --------

    async def Exec(self, request: pb.ExecRequest, context: Context) -> pb.ExecResponse:
        resolved = pb.ExecRequest()
        resolved.CopyFrom(request)
        resolved.container_id, _ = await self._running(request.container_id, "exec in it")
        return pb.ExecResponse(url=self._streaming.exec_url(resolved))

    async def Attach(self, request: pb.AttachRequest, context: Context) -> pb.AttachResponse:
        resolved = pb.AttachRequest()
        resolved.CopyFrom(request)
        resolved.container_id, config = await self._running(request.container_id, "attach")
        if request.stdin and not config.stdin:
            raise InvalidArgument(f"container {resolved.container_id} was created without stdin; attach without it")
        return pb.AttachResponse(url=self._streaming.attach_url(resolved))

    async def _running(self, ref: str, to: str) -> tuple[str, pb.ContainerConfig]:
        """The full id and config of the running container ``ref`` names, else NOT_FOUND/FAILED_PRECONDITION."""
        container_id = await self._existing("containers", ref, "container_id")
        record = await self._containers.get(container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state}, not RUNNING; cannot {to}")
        return container_id, pb.ContainerConfig.FromString(record.config)

    async def PortForward(self, request: pb.PortForwardRequest, context: Context) -> pb.PortForwardResponse:
        sandbox_id = await self._existing("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        sandbox = await self._sandboxes.get(sandbox_id)
        if sandbox.state != READY:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is not ready; cannot forward ports to it")
        resolved = pb.PortForwardRequest(pod_sandbox_id=sandbox_id, port=request.port)
        return pb.PortForwardResponse(url=self._streaming.port_forward_url(resolved))

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Context
    ) -> pb.UpdateContainerResourcesResponse:
        container_id = await self._existing("containers", request.container_id, "container_id")
        resources.check(request.linux, "linux")
        await self._containers.update_resources(container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    async def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: Context
    ) -> pb.UpdatePodSandboxResourcesResponse:
        sandbox_id = await self._existing("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        containers = self._containers
        await pod_resources.update(
            self._sandboxes,
            containers.cgroups,
            containers.cgroup_host,
            sandbox_id=sandbox_id,
            overhead=request.overhead,
            total=request.resources,
        )
        return pb.UpdatePodSandboxResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Context
    ) -> pb.ReopenContainerLogResponse:
        await self._containers.reopen_log(await self._existing("containers", request.container_id, "container_id"))
        return pb.ReopenContainerLogResponse()

    async def CheckpointContainer(
        self, request: pb.CheckpointContainerRequest, context: Context
    ) -> pb.CheckpointContainerResponse:
        """api.proto: the container keeps running; ``location`` is the archive the kubelet wants (a .tar)."""
        validate.required(request.location, "location")
        validate.absolute_path(request.location, "location")
        container_id = await self._existing("containers", request.container_id, "container_id")
        await self._containers.checkpoint(container_id, request.location, max(int(request.timeout), 0))
        return pb.CheckpointContainerResponse()

    def _list_containers(self, spec: pb.ContainerFilter | None) -> list[ContainerView]:
        if spec is not None and spec.pod_sandbox_id:  # the kubelet's per-pod call: scan without building views
            records = self._containers.index.all(lambda r: r.sandbox_id == spec.pod_sandbox_id)
            views = [self._container_views.of(r) for r in records]
        else:
            views = self._container_views.all()
        return [v for v in views if matches(spec, v.record.id, v.status)]


def _handler_features(features: OciFeatures) -> pb.RuntimeHandlerFeatures:
    """From the handler's OCI runtime's own ``features`` (asked once): the kubelet asks for recursive read-only
    mounts only on handlers that report them."""
    return pb.RuntimeHandlerFeatures(
        recursive_read_only_mounts=features.recursive_read_only, user_namespaces=features.user_namespaces
    )
