"""Calling any CRI RPC by name over a real channel, and judging the status it answers.

A bad request must get a deliberate status: the code the request deserves and a message saying what was
wrong. UNKNOWN and INTERNAL (the daemon's "this is a bug" answer, see :mod:`moorage.api.guard`), a call that
does not answer in time, and an error without a message are all findings.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from moorage.cri import IMAGE_SERVICE, RUNTIME_SERVICE

RPCS: list[tuple[ServiceDescriptor, MethodDescriptor]] = [
    (service, method) for service in (RUNTIME_SERVICE, IMAGE_SERVICE) for method in service.methods
]

DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # only when the daemon says so (ExecSync's timeout), never our deadline
}
PULLS = {"PullImage", "RunPodSandbox"}  # RunPodSandbox pulls the sandbox image for a pod sharing its PID namespace
PULL_FAILURES = {  # a pull of a name that resolves to a registry that cannot serve it
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
ENDLESS = {"GetContainerEvents"}
"""Streams that only end when the client goes: read for a moment, then cancelled by our deadline."""
ENDLESS_WINDOW = 0.3
TIMEOUT = 60.0
"""What a call may take before it counts as a hang (a pod with its CNI ADD takes well under a second here)."""


@dataclass(frozen=True)
class Answer:
    rpc: str
    code: grpc.StatusCode
    details: str
    response: Message | None = None  # the (last) response of a call that succeeded

    def finding(self) -> str | None:
        """Why this answer is wrong, or None when it is a deliberate one."""
        if self.code == grpc.StatusCode.DEADLINE_EXCEEDED and self.details == "Deadline Exceeded":
            return f"no answer within {TIMEOUT:.0f}s (a hang)"
        if self.code in DELIBERATE or (self.rpc in PULLS and self.code in PULL_FAILURES):
            return None if self.code == grpc.StatusCode.OK or self.details.strip() else "an error without a message"
        return f"{self.code.name} is not a deliberate answer to a bad request"


def request_class(method: MethodDescriptor) -> type[Message]:
    cls: type[Message] = message_factory.GetMessageClass(method.input_type)
    return cls


def invoke(channel: grpc.Channel, service: ServiceDescriptor, method: MethodDescriptor, request: Message) -> Answer:
    path = f"/{service.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    serialize, deserialize = type(request).SerializeToString, response_class.FromString
    try:
        if not method.server_streaming:
            response = channel.unary_unary(path, serialize, deserialize)(request, timeout=TIMEOUT)
            return Answer(method.name, grpc.StatusCode.OK, "", response)
        endless = method.name in ENDLESS
        stream = channel.unary_stream(path, serialize, deserialize)(
            request, timeout=ENDLESS_WINDOW if endless else TIMEOUT
        )
        responses = list(stream)
        return Answer(method.name, grpc.StatusCode.OK, "", responses[-1] if responses else None)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if method.name in ENDLESS and code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
            return Answer(method.name, grpc.StatusCode.OK, "")  # still streaming when we left: as it should
        return Answer(method.name, code, details)
