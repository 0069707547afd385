"""Hypothesis strategies for protobuf messages, built from their descriptors.

:func:`message` walks a message descriptor and draws every field: strings (empty, huge, NUL bytes, unicode,
path traversal), integers across and past the field's range, enums with values the proto does not define,
floats with infinities and NaN, bytes, repeated fields and maps, sub-messages down to a bounded depth.
:func:`mutated` takes a known-valid message and replaces one field, somewhere in its tree, with such a value.

Some fields reach the host (a pod's cgroup parent, its log directory, a mount's host path): the caller passes
:class:`Overrides`, strategies by field name (or ``Message.field``) that keep those values inside the test's own
temp dirs and cgroups, while every other field gets the generic, hostile values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MAX_DEPTH = 4
HUGE = 1 << 16

NASTY_TEXT = [
    "",
    " ",
    ".",
    "..",
    "../",
    "../../../../etc/passwd",
    "/",
    "//",
    "/etc/shadow",
    "a/../../b",
    "\0",
    "a\0b",
    "\n",
    "a\nb",
    "%s%n",
    "-1",
    "0",
    "${HOME}",
    "$(reboot)",
    "'\"",
    "\u202e\u0301",
    "\U0001f600",
    "\ud7ff\ufffe",
    "default",
    "kube-system",
    "runc",
    "crun",
    "docker.io/library/busybox:latest",
    "sha256:" + "0" * 64,
    "a" * 254,
    "x" * HUGE,
]
"""Strings that have broken parsers, paths and names before."""

INT_EDGES = [
    0,
    1,
    -1,
    2,
    255,
    256,
    65535,
    65536,
    1 << 31,
    (1 << 31) - 1,
    -(1 << 31),
    1 << 32,
    (1 << 63) - 1,
    -(1 << 63),
]

_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
}

Strategy = st.SearchStrategy[object]


@dataclass
class Overrides:
    """Strategies for fields by name: ``"Mount.host_path"`` (message name and field) wins over ``"host_path"``,
    which applies to string fields of that name in every message."""

    by_name: Mapping[str, Strategy] = field(default_factory=dict)

    def get(self, f: FieldDescriptor) -> Strategy | None:
        assert f.containing_type is not None
        own = self.by_name.get(f"{f.containing_type.name}.{f.name}")
        if own is not None or f.type != FieldDescriptor.TYPE_STRING:
            return own
        return self.by_name.get(f.name)  # by name alone: string fields only (ids, paths)


def text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=24), st.text(alphabet="abc./-_:@", max_size=12))


def integer(kind: int) -> st.SearchStrategy[int]:
    low, high = _RANGES[kind]
    edges = [v for v in INT_EDGES if low <= v <= high] + [low, high]
    return st.one_of(st.sampled_from(edges), st.integers(-5, 100).filter(lambda v: low <= v), st.integers(low, high))


def scalar(f: FieldDescriptor, overrides: Overrides, depth: int) -> Strategy:
    """One value of ``f`` (for a repeated field: one element)."""
    given = overrides.get(f)
    if given is not None:
        return given
    if f.type == FieldDescriptor.TYPE_STRING:
        return text()
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=32), st.just(b"\0" * HUGE))
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if f.type == FieldDescriptor.TYPE_FLOAT else 64)
    if f.type == FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        known = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 40), st.sampled_from([(1 << 31) - 1, -(1 << 31)]))
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        assert f.message_type is not None
        return message(f.message_type, overrides, depth + 1)
    return integer(f.type)


def _is_map(f: FieldDescriptor) -> bool:
    return (
        f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type is not None and f.message_type.GetOptions().map_entry
    )


def value(f: FieldDescriptor, overrides: Overrides, depth: int = 0) -> Strategy:
    """A whole value for ``f``: a list for a repeated field, a dict for a map, else one scalar or message."""
    if _is_map(f):
        given = overrides.get(f)
        if given is not None:
            return given
        assert f.message_type is not None
        key_field, value_field = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        return st.dictionaries(scalar(key_field, overrides, depth), scalar(value_field, overrides, depth), max_size=3)
    if f.is_repeated:
        return st.lists(scalar(f, overrides, depth), max_size=3)
    return scalar(f, overrides, depth)


def assign(msg: Message, f: FieldDescriptor, new: object) -> None:
    """Set field ``f`` of ``msg`` to ``new`` (a value as :func:`value` draws it)."""
    if _is_map(f):
        target = getattr(msg, f.name)
        target.clear()
        assert f.message_type is not None
        if f.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
            for k, v in new.items():  # type: ignore[attr-defined]
                target[k].CopyFrom(v)
        else:
            target.update(new)
    elif f.is_repeated:
        target = getattr(msg, f.name)
        del target[:]
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            for item in new:  # type: ignore[attr-defined]
                target.add().CopyFrom(item)
        else:
            target.extend(new)
    elif f.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(msg, f.name).CopyFrom(new)
    else:
        setattr(msg, f.name, new)


def message(descriptor: Descriptor, overrides: Overrides | None = None, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of ``descriptor`` with any subset of its fields drawn by :func:`value`."""
    overrides = overrides or Overrides()
    cls: Callable[[], Message] = message_factory.GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(cls())
    fields = list(descriptor.fields)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for f in fields:
            if draw(st.integers(0, 2)) == 0:  # a third of fields set, so deep fields get reached
                assign(msg, f, draw(value(f, overrides, depth)))
        return msg

    return build()


FieldPath = tuple[FieldDescriptor, ...]


def field_paths(descriptor: Any, depth: int = 0, prefix: FieldPath = ()) -> list[FieldPath]:
    """Every path of fields from ``descriptor`` down to :data:`MAX_DEPTH` (singular sub-messages only)."""
    paths: list[FieldPath] = []
    for f in descriptor.fields:
        path = (*prefix, f)
        paths.append(path)
        nested = f.type == FieldDescriptor.TYPE_MESSAGE and not f.is_repeated
        if nested and depth < MAX_DEPTH and f.message_type is not None:
            paths.extend(field_paths(f.message_type, depth + 1, path))
    return paths


def mutated(valid: Message, overrides: Overrides | None = None) -> st.SearchStrategy[Message]:
    """``valid`` with one field, anywhere in its tree, replaced by a drawn value."""
    overrides = overrides or Overrides()
    paths = field_paths(valid.DESCRIPTOR)
    if not paths:
        return st.just(valid)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = type(valid)()
        msg.CopyFrom(valid)
        path = draw(st.sampled_from(paths))
        target = msg
        for f in path[:-1]:
            target = getattr(target, f.name)
        assign(target, path[-1], draw(value(path[-1], overrides, len(path))))
        return msg

    return build()


def describe(msg: Message, limit: int = 600) -> str:
    """The message as text for a failure report, cut to ``limit`` characters."""
    shown = f"{type(msg).__name__} {{{str(msg).strip()}}}".replace("\n", " ")
    return shown if len(shown) <= limit else shown[:limit] + f"... ({len(shown)} chars)"
