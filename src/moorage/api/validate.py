"""Checks of CRI requests at the API edge: each failure is INVALID_ARGUMENT naming the field.

Names and ids end up in file paths, cgroup names and log lines, so a NUL byte or a path separator in one
is refused here, before anything below the edge sees it.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from moorage.errors import InvalidArgument

MAX_NAME = 253


def present(message: Message, field: str, where: str) -> None:
    """``message.field`` (a sub-message) must be set."""
    if not message.HasField(field):
        raise InvalidArgument(f"{where}.{field} is required")


def name(value: str, field: str) -> str:
    """A CRI metadata name, namespace or uid."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if "\0" in value:
        raise InvalidArgument(f"{field} {value!r} contains a NUL byte")
    if "/" in value:
        raise InvalidArgument(f"{field} {value!r} contains a path separator '/'")
    if value in (".", ".."):
        raise InvalidArgument(f"{field} must not be {value!r}")
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"{field} is {len(value)} characters long; at most {MAX_NAME} are allowed")
    return value


def object_id(value: str, field: str) -> str:
    """A pod or container id as the client gave it (full or a prefix)."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if "\0" in value or "/" in value:
        raise InvalidArgument(f"{field} {value!r} is not a valid id (NUL byte or '/')")
    return value


def required(value: str, field: str) -> str:
    """A string field that must be non-empty and free of NUL bytes (image names, paths)."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if "\0" in value:
        raise InvalidArgument(f"{field} {value!r} contains a NUL byte")
    return value


def relative_path(value: str, field: str, under: str) -> str:
    """A path the request gives relative to a directory (a container's log_path in the pod's log_directory);
    it must stay inside that directory."""
    if "\0" in value:
        raise InvalidArgument(f"{field} {value!r} contains a NUL byte")
    if value.startswith("/"):
        raise InvalidArgument(f"{field} {value!r} must be relative to {under}")
    if ".." in value.split("/"):
        raise InvalidArgument(f"{field} {value!r} leads outside {under} ('..' is not allowed)")
    return value


def absolute_path(value: str, field: str) -> str:
    """A host path the request may leave empty, else absolute: a relative one would be resolved against the
    daemon's working directory (a pod's log_directory, where its containers' logs are written)."""
    if "\0" in value:
        raise InvalidArgument(f"{field} {value!r} contains a NUL byte")
    if value and not value.startswith("/"):
        raise InvalidArgument(f"{field} {value!r} must be an absolute path")
    return value


def known_enums(message: Message, where: str) -> None:
    """Every enum value in ``message`` (a pod or container config) is one the proto defines: proto3 keeps unknown
    numbers, and a mode or protocol nobody defined must be refused, not guessed at."""
    for f, value in message.ListFields():
        path = f"{where}.{f.name}"
        if f.type == FieldDescriptor.TYPE_ENUM:
            assert f.enum_type is not None
            for number in value if f.is_repeated else [value]:
                if number not in f.enum_type.values_by_number:
                    known = ", ".join(v.name for v in f.enum_type.values)
                    raise InvalidArgument(f"{path}: {number} is not a {f.enum_type.name} ({known})")
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            assert f.message_type is not None
            if f.message_type.GetOptions().map_entry:
                values = list(value.values()) if f.message_type.fields_by_name["value"].message_type else []
            else:
                values = list(value) if f.is_repeated else [value]
            for item in values:
                known_enums(item, path)
