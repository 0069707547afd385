"""The declarations printed: the commented default config (``moorage config default``) and the README's
configuration reference table (``make docs``)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from moorage.config.schema import Config, plain


def iter_keys(config: Any = None, prefix: str = "") -> typing.Iterator[tuple[str, Any, str]]:
    """Every leaf key of ``config`` (default: the defaults) as (dotted name, value, doc), in declaration order."""
    obj = Config() if config is None else config
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f.metadata["doc"]


def render_toml() -> str:
    """The complete default config, commented, as ``moorage config default`` prints it."""
    lines = [
        "# Moorage configuration. Every key is shown with its default; delete what you do not change.",
        "",
    ]
    _render_table(Config(), "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _render_table(obj: Any, name: str, lines: list[str]) -> None:
    if name:
        lines.append(f"[{name}]")
    subtables: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        dotted = f"{name}.{f.name}" if name else f.name
        if dataclasses.is_dataclass(value):
            subtables.append((dotted, value))
            continue
        lines.append(f"# {f.metadata['doc']}")
        if isinstance(value, Mapping):
            subtables.extend((f"{dotted}.{k}", v) for k, v in value.items())
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    lines.append("")
    for dotted, value in subtables:
        _render_table(value, dotted, lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r}")


def render_markdown() -> str:
    """The README's configuration reference table."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for dotted, default, doc in iter_keys():
        if isinstance(default, Mapping):
            shown = ", ".join(f"{k} → {plain(v)['path']}" for k, v in default.items())
        else:
            shown = _toml_value(default)
        rows.append(f"| `{dotted}` | `{shown}` | {doc} |")
    return "\n".join(rows) + "\n"
