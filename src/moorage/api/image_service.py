"""CRI ImageService: one short method per RPC, delegating to :mod:`moorage.images.service`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from moorage.api import validate
from moorage.api.batching import batches
from moorage.api.cri import pb
from moorage.images import auth
from moorage.images.catalog import ImageRecord, config_json
from moorage.images.service import ImageManager

Context = grpc.aio.ServicerContext[Any, Any]


class ImageService:
    def __init__(self, images: ImageManager) -> None:
        self._images = images

    async def PullImage(self, request: pb.PullImageRequest, context: Context) -> pb.PullImageResponse:
        # image_ref is the image id (the config digest): Kubernetes 1.36 requires it to equal Image.id.
        text = validate.required(request.image.image, "image.image")
        a = request.auth
        credentials = auth.from_request(a.username, a.password, a.auth, a.identity_token, a.registry_token)
        record = await self._images.pull(text, credentials)
        return pb.PullImageResponse(image_ref=record.id)

    async def ImageStatus(self, request: pb.ImageStatusRequest, context: Context) -> pb.ImageStatusResponse:
        # An unknown image is an empty response, not an error (api.proto).
        text = validate.required(request.image.image, "image.image")
        record = await self._images.find(text)
        if record is None:
            return pb.ImageStatusResponse()
        info = {"info": json.dumps(_verbose(record), sort_keys=True)} if request.verbose else {}
        return pb.ImageStatusResponse(image=self._image(record), info=info)

    async def ListImages(self, request: pb.ListImagesRequest, context: Context) -> pb.ListImagesResponse:
        records = await self._images.list(request.filter.image.image if request.HasField("filter") else "")
        return pb.ListImagesResponse(images=[self._image(r) for r in records])

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
