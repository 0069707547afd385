"""The daemon's own structured log (not container logs): key=value text or JSON lines on stderr.

Every record carries a UTC timestamp, the level, the event and its fields; fields bound with
``structlog.contextvars`` (the request id and RPC name bound by the API interceptor) are merged in.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str, fmt: str) -> None:
    """(Re)configure logging; safe to call again, e.g. after SIGHUP reloads the config."""
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.processors.LogfmtRenderer(key_order=["time", "level", "event"], drop_missing=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (grpc, asyncio) log through the standard library: keep their warnings, in the same stream.
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="time=%(asctime)s level=%(levelname)s logger=%(name)s event=%(message)r",
        force=True,
    )
