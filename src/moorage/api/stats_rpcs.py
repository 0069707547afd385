"""The stats and metrics RPCs: what the kubelet polls for its summary API, eviction and, with
PodAndContainerStatsFromCRI, ``/metrics/cadvisor``. Each List RPC has a Stream form sending the same items in
batches."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from moorage.api.batching import batches
from moorage.api.views import Context, RecordLookup, container_status, matches, pod_status
from moorage.cri import pb
from moorage.errors import NotFound
from moorage.observe import pod_metrics
from moorage.state.models import READY


class StatsRpcs(RecordLookup):
    async def ContainerStats(self, request: pb.ContainerStatsRequest, context: Context) -> pb.ContainerStatsResponse:
        container_id = await self._existing("containers", request.container_id, "container_id")
        return pb.ContainerStatsResponse(stats=await self._stats_of(container_id))

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Context
    ) -> pb.ListContainerStatsResponse:
        return pb.ListContainerStatsResponse(
            stats=await self._container_stats(request.filter if request.HasField("filter") else None)
        )

    async def PodSandboxStats(self, request: pb.PodSandboxStatsRequest, context: Context) -> pb.PodSandboxStatsResponse:
        sandbox_id = await self._existing("sandboxes", request.pod_sandbox_id, "pod_sandbox_id")
        return pb.PodSandboxStatsResponse(stats=await self._pod_stats_of(sandbox_id))

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Context
    ) -> pb.ListPodSandboxStatsResponse:
        return pb.ListPodSandboxStatsResponse(
            stats=await self._pod_stats(request.filter if request.HasField("filter") else None)
        )

    async def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainerStatsResponse]:
        items = await self._container_stats(request.filter if request.HasField("filter") else None)
        for batch in batches(items):
            yield pb.StreamContainerStatsResponse(container_stats=batch)

    async def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxStatsResponse]:
        items = await self._pod_stats(request.filter if request.HasField("filter") else None)
        for batch in batches(items):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=batch)

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Context
    ) -> pb.ListMetricDescriptorsResponse:
        unified = self._containers.cgroup_host.unified
        return pb.ListMetricDescriptorsResponse(descriptors=pod_metrics.descriptors(unified))

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Context
    ) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse(pod_metrics=await self._metrics())

    async def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxMetricsResponse]:
        items = await self._metrics()
        for batch in batches(items):
            yield pb.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=batch)

    async def _container_stats(self, spec: pb.ContainerStatsFilter | None) -> list[pb.ContainerStats]:
        out = []
        for record in self._containers.all(spec.pod_sandbox_id if spec is not None else ""):
            if matches(spec, record.id, container_status(record)):
                with contextlib.suppress(NotFound):  # removed meanwhile
                    out.append(await self._stats_of(record.id))
        return out

    async def _pod_stats(self, spec: pb.PodSandboxStatsFilter | None) -> list[pb.PodSandboxStats]:
        out = []
        for record in self._sandboxes.all():
            if matches(spec, record.id, pod_status(record)):
                with contextlib.suppress(NotFound):  # removed meanwhile
                    out.append(await self._pod_stats_of(record.id))
        return out

    async def _stats_of(self, container_id: str) -> pb.ContainerStats:
        record = await self._containers.get(container_id)
        sandbox = await self._sandboxes.get(record.sandbox_id)
        return await self._containers.usage.container(record, pb.PodSandboxConfig.FromString(sandbox.config))

    async def _pod_stats_of(self, sandbox_id: str) -> pb.PodSandboxStats:
        """The pod's own cgroup (its cgroup_parent) and each of its containers."""
        sandbox = await self._sandboxes.get(sandbox_id)
        pod = pb.PodSandboxConfig.FromString(sandbox.config)
        usage = self._containers.usage
        containers = [await usage.container(record, pod) for record in self._containers.all(sandbox_id)]
        return await usage.pod(sandbox, pod, containers)

    async def _metrics(self) -> list[pb.PodSandboxMetrics]:
        """Every ready pod with its running containers."""
        out = []
        for sandbox in self._sandboxes.all():
            if sandbox.state == READY:
                pod = pb.PodSandboxConfig.FromString(sandbox.config)
                records = self._containers.all(sandbox.id)
                out.append(await self._containers.usage.pod_metrics(sandbox, pod, records))
        return out
