"""Reading a config file (and command-line overrides) against the declarations: one ConfigError naming the
file and the dotted key for an unknown key, a value of the wrong type or a bad value."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moorage.config.checks import Check, dns_label
from moorage.config.schema import Config, plain
from moorage.defaults import DEFAULT_CONFIG_PATH
from moorage.errors import ConfigError


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (None: the default path if it exists, else all defaults) and apply ``overrides``.

    ``overrides`` maps dotted keys (``"root"``, ``"log.level"``) to values, as command-line flags give them;
    they are checked like the file's values and name the flag's key in errors.
    """
    source = str(path) if path is not None else DEFAULT_CONFIG_PATH
    table: dict[str, Any] = {}
    if path is not None or Path(DEFAULT_CONFIG_PATH).exists():
        try:
            with open(source, "rb") as fh:
                table = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    config: Config = _build(Config, table, prefix="", source=source)
    if overrides:
        config = with_values(config, overrides, source="command line")
    _check_whole(config, source)
    return config


def with_values(config: Config, values: Mapping[str, Any], source: str) -> Config:
    """A copy of ``config`` with the dotted keys in ``values`` set, checked as a file's values are."""
    table = plain(config)
    for dotted, value in values.items():
        *parents, last = dotted.split(".")
        node = table
        for part in parents:
            node = node[part]
        node[last] = list(value) if isinstance(value, tuple) else value
    return _build(Config, table, prefix="", source=source)  # type: ignore[no-any-return]


def _check_whole(config: Config, source: str) -> None:
    """Rules that tie several keys together."""
    if config.runtime.default_handler not in config.runtime.handlers:
        known = ", ".join(sorted(config.runtime.handlers)) or "none"
        raise ConfigError(
            f"{source}: runtime.default_handler: {config.runtime.default_handler!r} is not a key of "
            f"runtime.handlers (defined: {known})"
        )


def _build(cls: type[Any], table: Mapping[str, Any], *, prefix: str, source: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.')}: expected a table, got {_kind(table)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in table:
        if name not in fields:
            known = ", ".join(f"{prefix}{n}" for n in fields)
            raise ConfigError(f"{source}: {prefix}{name}: unknown key (known here: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            continue
        dotted = f"{prefix}{name}"
        values[name] = _convert(hints[name], table[name], dotted=dotted, source=source)
        check: Check | None = f.metadata.get("check")
        problem = check(values[name]) if check else None
        if problem:
            raise ConfigError(f"{source}: {dotted}: {problem}")
    return cls(**values)


def _convert(hint: Any, value: Any, *, dotted: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{dotted}.", source=source)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {dotted}: expected a list of strings, got {_kind(value)}")
        return tuple(value)
    if origin is Mapping:
        _, item = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {dotted}: expected a table, got {_kind(value)}")
        out = {}
        for name, sub in value.items():
            problem = dns_label(name)
            if problem:
                raise ConfigError(f"{source}: {dotted}.{name}: name {problem}")
            out[name] = _convert(item, sub, dotted=f"{dotted}.{name}", source=source)
        return types.MappingProxyType(out)
    if hint is bool or hint is int or hint is str:
        if type(value) is not hint:
            raise ConfigError(f"{source}: {dotted}: expected {_TYPE_NAMES[hint]}, got {_kind(value)}")
        return value
    raise TypeError(f"config key {dotted} has an unsupported type {hint!r}")  # a bug in the declarations


_TYPE_NAMES = {bool: "a boolean", int: "an integer", str: "a string"}


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return f"a list {value!r}"
    return f"{type(value).__name__} {value!r}"
