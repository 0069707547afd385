"""Moorage's one exception tree.

Every error that can reach a CRI client is a :class:`MoorageError`. Each class names the gRPC status code it
maps to (``grpc_code``), so the translation to gRPC happens in exactly one place
(:mod:`moorage.api.guard`) and code below the API edge never imports grpc to fail a request.

    MoorageError                     INTERNAL     something broke that the client cannot fix
    ├── InvalidArgument              INVALID_ARGUMENT  the request itself is malformed
    │   ├── AmbiguousId                               an id prefix that matches more than one record
    │   └── InvalidImage                              the image named is unusable: schema1, no manifest for
    │                                                 this platform, a malicious or malformed layer
    ├── NotFound                     NOT_FOUND    an id or name that does not exist
    ├── AlreadyExists                ALREADY_EXISTS  a name already in use
    ├── FailedPrecondition           FAILED_PRECONDITION  valid request, wrong state
    ├── Unimplemented                UNIMPLEMENTED  an RPC or option moorage does not serve (yet)
    ├── Unavailable                  UNAVAILABLE  not ready, or a dependency is down
    ├── DeadlineExceeded             DEADLINE_EXCEEDED
    ├── ResourceExhausted            RESOURCE_EXHAUSTED
    ├── Unauthenticated              UNAUTHENTICATED  a registry refused the credentials (or their absence)
    ├── PermissionDenied             PERMISSION_DENIED  a registry refused access with valid credentials
    ├── DataLoss                     DATA_LOSS    content that does not match its digest or size
    └── StoreError                   INTERNAL     the metadata store is unreadable or newer than this moorage

Errors that never reach gRPC (a bad config file, a socket already served by another daemon) are
:class:`ConfigError` and :class:`StartupError`; the CLI prints them and exits non-zero.
"""

from __future__ import annotations

import grpc


class MoorageError(Exception):
    """Base of every error a CRI request can fail with."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MoorageError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class AmbiguousId(InvalidArgument):
    """An id prefix that matches several objects."""


class NotFound(MoorageError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MoorageError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MoorageError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Unimplemented(MoorageError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(MoorageError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MoorageError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(MoorageError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(MoorageError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MoorageError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class InvalidImage(InvalidArgument):
    """The image a request names exists but cannot be used: the request was well formed, its target is not."""


class DataLoss(MoorageError):
    grpc_code = grpc.StatusCode.DATA_LOSS


class ConfigError(Exception):
    """A config file (or a flag overriding it) that moorage refuses to start with.

    The message names the file and the key, e.g. ``/etc/moorage/config.toml: cni.bin_dirs: expected a list
    of strings, got 3``.
    """


class StartupError(Exception):
    """The daemon cannot start: the socket is served by a live daemon, the root is locked, ..."""


class StoreError(MoorageError):
    """The metadata store is unreadable or newer than this moorage understands."""
