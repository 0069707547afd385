"""moorage's own RPCs beside the CRI, for the ``moorage`` CLI: what the CRI cannot express.

``/moorage.v1.Images/Pull`` pulls like CRI PullImage but streams the pull's progress (per layer bytes and
state) as it goes, for ``moorage pull``'s bars; a second client pulling the same name joins the same pull.
``/moorage.v1.Images/Import`` loads an image archive on the node's filesystem (``moorage image import``).
Messages are JSON objects, so these need no .proto of their own; errors go through the same guard as CRI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from moorage.api import guard, validate
from moorage.errors import InvalidArgument
from moorage.images import auth
from moorage.images.service import ImageManager

SERVICE = "moorage.v1.Images"
Context = grpc.aio.ServicerContext[Any, Any]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"request is not JSON: {exc}") from None
    return message if isinstance(message, dict) else {}


class AdminService:
    def __init__(self, images: ImageManager) -> None:
        self._images = images

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Pull": grpc.unary_stream_rpc_method_handler(
                    guard.server_stream("Pull", self.pull), request_deserializer=decode, response_serializer=encode
                ),
                "Import": grpc.unary_unary_rpc_method_handler(
                    guard.unary("Import", self.import_archive), request_deserializer=decode, response_serializer=encode
                ),
            },
        )

    async def pull(self, request: dict[str, Any], context: Context) -> AsyncIterator[dict[str, Any]]:
        text = validate.required(str(request.get("image", "")), "image")
        credentials = auth.from_request(str(request.get("username", "")), str(request.get("password", "")))
        pull = asyncio.ensure_future(self._images.pull(text, credentials))
        await asyncio.sleep(0)  # let the pull register its progress
        progress = self._images.progress(text, credentials)
        try:
            if progress is not None:
                async for snapshot in progress.watch():
                    yield {"progress": snapshot}  # the last one is the finished pull's, every layer done
            record = await pull
        finally:
            if not pull.done():
                pull.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pull
        yield {"image_id": record.id, "repo_tags": record.repo_tags, "repo_digests": record.repo_digests}

    async def import_archive(self, request: dict[str, Any], context: Context) -> dict[str, Any]:
        path = Path(validate.required(str(request.get("path", "")), "path"))
        if not path.is_absolute():
            raise InvalidArgument(f"path {path} must be absolute: the daemon reads it from its own filesystem")
        if not path.is_file():
            raise InvalidArgument(f"{path} is not a file on the node")
        records = await self._images.import_archive(path)
        return {"images": [{"image_id": r.id, "repo_tags": r.repo_tags} for r in records]}
