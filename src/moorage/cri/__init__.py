"""The generated CRI v1 messages and service stubs, under short names.

``make protos`` generates ``_gen/`` from ``proto/runtime/v1/api.proto``; nothing else imports ``_gen``.
"""

from moorage.cri._gen.runtime.v1 import api_pb2 as pb
from moorage.cri._gen.runtime.v1 import api_pb2_grpc as pb_grpc

RUNTIME_SERVICE = pb.DESCRIPTOR.services_by_name["RuntimeService"]
IMAGE_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]

__all__ = ["IMAGE_SERVICE", "RUNTIME_SERVICE", "pb", "pb_grpc"]
