"""The generated CRI v1 messages and service stubs, under short names.

``make protos`` generates ``_gen/`` from ``proto/runtime/v1/api.proto``; nothing else imports ``_gen``.

``pb_grpc`` (the generated stubs and servicers) is imported when first asked for: nothing in the daemon uses it,
and the CLI's client makes its stubs from the descriptors (:mod:`moorage.cli.client`), so a client command does
not pay for that module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moorage.cri._gen.runtime.v1 import api_pb2 as pb

if TYPE_CHECKING:
    from moorage.cri._gen.runtime.v1 import api_pb2_grpc as pb_grpc

RUNTIME_SERVICE = pb.DESCRIPTOR.services_by_name["RuntimeService"]
IMAGE_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]

__all__ = ["IMAGE_SERVICE", "RUNTIME_SERVICE", "pb", "pb_grpc"]


def __getattr__(name: str) -> Any:
    if name != "pb_grpc":
        raise AttributeError(f"module 'moorage.cri' has no attribute {name!r}")
    from moorage.cri._gen.runtime.v1 import api_pb2_grpc  # noqa: PLC0415

    globals()["pb_grpc"] = api_pb2_grpc
    return api_pb2_grpc
