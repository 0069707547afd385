"""Turn a service object into gRPC handlers, straight from the CRI service descriptor.

Every RPC of the service gets a handler: the object's method of the same name when it has one, otherwise
one that fails with :class:`~moorage.errors.Unimplemented` naming the RPC, so a client never sees a bare
"Method not implemented!" or a hang for what moorage does not serve yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from moorage.api import guard
from moorage.errors import Unimplemented


def service_handler(service: ServiceDescriptor, impl: object) -> grpc.GenericRpcHandler:
    handlers = {method.name: _method_handler(service, method, impl) for method in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def unimplemented(service: ServiceDescriptor, impl: object) -> list[str]:
    """The RPC names of ``service`` that ``impl`` does not serve."""
    return [m.name for m in service.methods if not callable(getattr(impl, m.name, None))]


def _method_handler(
    service: ServiceDescriptor, method: MethodDescriptor, impl: object
) -> grpc.RpcMethodHandler[Any, Any]:
    behavior: Callable[..., Any] | None = getattr(impl, method.name, None)
    if not callable(behavior):
        behavior = _refuse(f"{service.name}.{method.name}")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    name = method.name
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(
            guard.server_stream(name, behavior),
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )
    return grpc.unary_unary_rpc_method_handler(
        guard.unary(name, behavior),
        request_deserializer=request_class.FromString,
        response_serializer=_serializer(response_class),
    )


def _serializer(response_class: Any) -> Callable[[Any], bytes]:
    """A unary method may answer its response already encoded (bytes: a cached List answer, or cached fields
    plus the rest), which goes out as it is."""
    serialize = response_class.SerializeToString

    def encode(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return encode


def _refuse(rpc: str) -> Callable[[object, object], Any]:
    async def refuse(request: object, context: object) -> None:
        raise Unimplemented(f"{rpc} is not implemented by moorage yet")

    return refuse
