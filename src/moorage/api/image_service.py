"""CRI ImageService: one short method per RPC, delegating to :mod:`moorage.images.service`.

ImageStatus and ListImages (the kubelet's image GC and status manager poll them) answer encoded bytes: each
image's ``Image`` message is built once per record version (records are immutable; the catalog publishes a new
one on change) and the whole list once per catalog generation, as :mod:`moorage.api.views` does for pods.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from moorage.api import validate
from moorage.api.batching import batches
from moorage.cri import pb
from moorage.images import auth
from moorage.images.service import ImageManager
from moorage.store.image_records import ImageRecord, config_json

Context = grpc.aio.ServicerContext[Any, Any]


class ImageService:
    def __init__(self, images: ImageManager) -> None:
        self._images = images
        self._encoded: dict[str, tuple[ImageRecord, str, bytes]] = {}  # id → (record, sandbox image, Image field)
        self._list: tuple[int, str, bytes] = (-1, "", b"")  # catalog generation, sandbox image, the List response

    async def PullImage(self, request: pb.PullImageRequest, context: Context) -> pb.PullImageResponse:
        # image_ref is the image id (the config digest): Kubernetes 1.36 requires it to equal Image.id.
        text = validate.required(request.image.image, "image.image")
        a = request.auth
        credentials = auth.from_request(
            a.username, a.password, a.auth, a.identity_token, a.registry_token, a.server_address
        )
        record = await self._images.pull(text, credentials)
        return pb.PullImageResponse(image_ref=record.id)

    async def ImageStatus(self, request: pb.ImageStatusRequest, context: Context) -> pb.ImageStatusResponse | bytes:
        # An unknown image is an empty response, not an error (api.proto).
        text = validate.required(request.image.image, "image.image")
        record = await self._images.find(text)
        if record is None:
            return pb.ImageStatusResponse()
        encoded = self._encode(record)  # ImageStatusResponse.image and ListImagesResponse.images are both field 1
        if request.verbose:
            info = {"info": json.dumps(_verbose(record), sort_keys=True)}
            encoded += pb.ImageStatusResponse(info=info).SerializeToString()
        return encoded

    async def ListImages(self, request: pb.ListImagesRequest, context: Context) -> bytes:
        if request.HasField("filter") and request.filter.image.image:
            return b"".join(self._encode(r) for r in await self._images.list(request.filter.image.image))
        generation, sandbox_image = await self._images.catalog.generation(), self._images.config().sandbox_image
        if self._list[:2] != (generation, sandbox_image):
            records = await self._images.list()
            self._list = (generation, sandbox_image, b"".join(self._encode(r) for r in records))
            current = {r.id for r in records}
            self._encoded = {k: v for k, v in self._encoded.items() if k in current}
        return self._list[2]

    async def StreamImages(
        self, request: pb.StreamImagesRequest, context: Context
    ) -> AsyncIterator[pb.StreamImagesResponse]:
        records = await self._images.list(request.filter.image.image if request.HasField("filter") else "")
        for batch in batches(records):
            yield pb.StreamImagesResponse(images=[self._image(r) for r in batch])

    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Context) -> pb.RemoveImageResponse:
        # Idempotent: removing what is not there succeeds (api.proto).
        await self._images.remove(validate.required(request.image.image, "image.image"))
        return pb.RemoveImageResponse()

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: Context) -> pb.ImageFsInfoResponse:
        usage = await self._images.usage()
        now = time.time_ns()
        images = pb.FilesystemUsage(
            timestamp=now,
            fs_id=pb.FilesystemIdentifier(mountpoint=usage.mountpoint),
            used_bytes=pb.UInt64Value(value=usage.used_bytes),
            inodes_used=pb.UInt64Value(value=usage.inodes_used),
        )
        return pb.ImageFsInfoResponse(image_filesystems=[images], container_filesystems=[images])

    def _encode(self, record: ImageRecord) -> bytes:
        """The image as field 1 of ImageStatusResponse (or one entry of ListImagesResponse), encoded."""
        sandbox_image = self._images.config().sandbox_image  # pinned follows it (the config may be reloaded)
        cached = self._encoded.get(record.id)
        if cached is None or cached[0] is not record or cached[1] != sandbox_image:
            cached = (record, sandbox_image, pb.ImageStatusResponse(image=self._image(record)).SerializeToString())
            self._encoded[record.id] = cached
        return cached[2]

    def _image(self, record: ImageRecord) -> pb.Image:
        image = pb.Image(
            id=record.id,
            repo_tags=record.repo_tags,
            repo_digests=record.repo_digests,
            size=record.size,
            spec=pb.ImageSpec(image=record.id),
            pinned=self._images.pinned(record),
        )
        uid, username = image_user(record)
        if uid is not None:
            image.uid.value = uid
        elif username:
            image.username = username
        return image


def image_user(record: ImageRecord) -> tuple[int | None, str]:
    """The image's USER as the kubelet wants it: a numeric uid, or else a user name (``user:group`` → user);
    neither when the image names no user (it runs as root unless the pod says otherwise)."""
    runtime = config_json(record).get("config")
    user = str(runtime.get("User") or "") if isinstance(runtime, dict) else ""
    name = user.partition(":")[0]
    if name.isdigit():
        return int(name), ""
    return None, name


def _verbose(record: ImageRecord) -> dict[str, Any]:
    return {
        "imageSpec": config_json(record),
        "manifestDigest": record.manifest_digest,
        "chainIDs": [la.chain_id for la in record.layers],
        "layers": [{"digest": la.digest, "size": la.size, "mediaType": la.media_type} for la in record.layers],
    }
