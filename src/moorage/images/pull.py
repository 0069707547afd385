"""One pull: which references and endpoints to try, and fetching an image from the first that has it.

A short name (``busybox``) resolves as registries.conf's short-name-mode says (an alias, else the
unqualified-search registries, docker.io when none are set; ambiguous names refused in enforcing mode: see
:mod:`moorage.images.registries_conf`). Each reference is tried at its mirrors first, then at its own registry,
each endpoint with only the credentials that belong to it (:func:`moorage.images.auth.for_endpoint`). A failed
pull names every endpoint it tried and why each failed, and raises the error class of the last one (the
registry itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from moorage.config import Config
from moorage.errors import InvalidImage, MoorageError
from moorage.images import auth, registries_conf
from moorage.images import manifest as mf
from moorage.images.auth import Credentials
from moorage.images.layers import LayerStore, Lease
from moorage.images.progress import Progress
from moorage.images.reference import DEFAULT_DOMAIN, Reference, parse
from moorage.images.registries_conf import candidates, load_registries
from moorage.images.registry_client import HttpClients, RegistryClient
from moorage.images.snapshots import chain_ids
from moorage.store.image_records import ImageRecord, Layer

log = structlog.get_logger(__name__)

DOCKER_HUB_HOST = "registry-1.docker.io"


@dataclass(frozen=True)
class PullPlan:
    """What a pull learned before downloading layers."""

    reference: Reference
    top_digest: str
    manifest: mf.Manifest
    manifest_digest: str
    documents: dict[str, bytes]
    config: mf.ImageConfig
    config_bytes: bytes


class Puller:
    def __init__(self, layers: LayerStore, http: HttpClients, config: Callable[[], Config]) -> None:
        self.layers = layers
        self.http = http
        self.config = config

    async def pull(self, text: str, credentials: Credentials, progress: Progress) -> ImageRecord:
        conf = load_registries(self.config())
        named = parse(text)  # the name as requested: a short name's registry is docker.io, as the kubelet reads it
        failures: list[tuple[str, MoorageError]] = []
        for ref in candidates(text, conf, pulling=True):
            try:
                endpoints = conf.endpoints(ref)
            except MoorageError as exc:
                failures.append((ref.domain, exc))
                continue
            for endpoint in endpoints:
                label = f"{'mirror ' if endpoint.mirror else ''}{endpoint.reference.domain}"
                try:
                    return await self._pull_from(named, ref, endpoint, credentials, progress)
                except MoorageError as exc:
                    log.warning("pull failed at endpoint", endpoint=label, error=exc.message)
                    failures.append((label, exc))
        last = failures[-1][1]
        if len(failures) == 1:
            raise type(last)(f"pulling {text}: {failures[0][0]}: {last.message}")
        tried = "; ".join(f"{label}: {exc.message}" for label, exc in failures)
        raise type(last)(f"pulling {text} failed at every endpoint tried: {tried}")

    async def _pull_from(
        self,
        named: Reference,
        ref: Reference,
        endpoint: registries_conf.Endpoint,
        credentials: Credentials,
        progress: Progress,
    ) -> ImageRecord:
        target = endpoint.reference
        image_config = self.config().image
        client = RegistryClient(
            self.http,
            DOCKER_HUB_HOST if target.domain == DEFAULT_DOMAIN else target.domain,
            target.path,
            insecure=endpoint.insecure,
            credentials=auth.for_endpoint(
                credentials, named, ref, target, mirror=endpoint.mirror, auth_files=image_config.auth_files
            ),
            retries=image_config.pull_retries,
        )
        with self.layers.lease() as lease:
            plan = await self._plan(client, ref, target, lease)
            layers = await self._fetch_layers(client, plan, progress, lease, image_config.max_concurrent_downloads)
            record = ImageRecord(
                id=plan.manifest.config.digest,
                manifest_digest=plan.manifest_digest,
                size=len(plan.documents[plan.manifest_digest])
                + plan.manifest.config.size
                + sum(d.size for d in plan.manifest.layers),
                config=plan.config_bytes,
                names=tuple(n for n in (ref.repo_tag, f"{ref.name}@{plan.top_digest}") if n),
                layers=layers,
            )
            kept = {*plan.documents, record.id, *(la.digest for la in layers if self.layers.content.has(la.digest))}
            await self.layers.catalog.save(record, kept)
        log.info("image pulled", reference=str(ref), image_id=record.id, endpoint=target.domain, size=record.size)
        return record

    async def _plan(self, client: RegistryClient, ref: Reference, target: Reference, lease: Lease) -> PullPlan:
        top = await client.manifest(target.digest or target.tag)
        parsed = mf.parse(top.body, top.media_type, str(ref))
        documents = {top.digest: top.body}
        manifest_digest = top.digest
        if isinstance(parsed, mf.Index):
            chosen = mf.select_platform(parsed, mf.node_platform(), str(ref))
            inner = await client.manifest(chosen.digest)
            parsed = mf.parse(inner.body, inner.media_type, f"{ref}@{chosen.digest}")
            if isinstance(parsed, mf.Index):
                raise InvalidImage(f"{ref}: index entry {chosen.digest} is another index, not an image manifest")
            documents[inner.digest] = inner.body
            manifest_digest = inner.digest
        config_bytes = await client.small_blob(parsed.config.digest, parsed.config.size)
        config = mf.parse_config(config_bytes, str(ref))
        if len(config.diff_ids) != len(parsed.layers):
            raise InvalidImage(
                f"{ref}: manifest lists {len(parsed.layers)} layers but its config {len(config.diff_ids)} diff ids"
            )
        lease.add(*documents, parsed.config.digest, *(d.digest for d in parsed.layers), *chain_ids(config.diff_ids))
        for digest, body in documents.items():
            await asyncio.to_thread(self.layers.content.put, body, digest)
        await asyncio.to_thread(self.layers.content.put, config_bytes, parsed.config.digest)
        return PullPlan(ref, top.digest, parsed, manifest_digest, documents, config, config_bytes)

    async def _fetch_layers(
        self, client: RegistryClient, plan: PullPlan, progress: Progress, lease: Lease, concurrency: int
    ) -> tuple[Layer, ...]:
        chains = chain_ids(plan.config.diff_ids)
        slots = asyncio.Semaphore(concurrency)
        descriptors = plan.manifest.layers

        async def one(index: int) -> None:
            desc, chain_id = descriptors[index], chains[index]
            if self.layers.snapshots.exists(chain_id):
                progress.layer(desc.digest, desc.size, "exists")
                return
            progress.layer(desc.digest, desc.size)
            async with slots:
                started = time.monotonic()
                blob = await self.layers.blob(
                    desc.digest,
                    desc.size,
                    lambda ingest: client.download(desc.digest, ingest, lambda n: progress.add_bytes(desc.digest, n)),
                    owner=f"{client.host}\0{client.credentials.fingerprint()}",
                )
                seconds = time.monotonic() - started
            log.info("layer plan", layer=desc.digest, bytes=desc.size, seconds=round(seconds, 3))
            await self.layers.snapshot(chain_id, plan.config.diff_ids[index], blob, progress, desc.digest)
            progress.set_state(desc.digest, "complete")

        try:
            async with asyncio.TaskGroup() as group:
                for index in range(len(descriptors)):
                    group.create_task(one(index))
        except BaseExceptionGroup as group_error:
            raise _first_moorage_error(group_error) from None
        return tuple(
            Layer(chains[i], plan.config.diff_ids[i], d.digest, d.size, d.media_type) for i, d in enumerate(descriptors)
        )


def _first_moorage_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed set of layer tasks: a MoorageError when there is one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return next((e for e in leaves if isinstance(e, MoorageError)), leaves[0])
