"""Moorage's configuration: one frozen dataclass per TOML table, each key with its default and its doc.

The declarations (:mod:`.schema`, with the value checks of :mod:`.checks`) are the single source of truth:
:func:`load` (:mod:`.loading`) validates a file against them, :func:`render_toml` prints the commented default
config (``moorage config default``) and :func:`render_markdown` the README's reference table (:mod:`.render`).
Every key has a default, so no file is needed.

An unknown key, a value of the wrong type or a bad value raises one :class:`~moorage.errors.ConfigError` naming
the file and the dotted key, and the daemon does not start.
"""

from __future__ import annotations

from moorage.config.loading import load, with_values
from moorage.config.render import iter_keys, render_markdown, render_toml
from moorage.config.schema import (
    CniSection,
    Config,
    HandlerSection,
    ImageSection,
    LogSection,
    MetricsSection,
    RuntimeSection,
    StreamingSection,
    key,
)

__all__ = [
    "CniSection",
    "Config",
    "HandlerSection",
    "ImageSection",
    "LogSection",
    "MetricsSection",
    "RuntimeSection",
    "StreamingSection",
    "iter_keys",
    "key",
    "load",
    "render_markdown",
    "render_toml",
    "with_values",
]
