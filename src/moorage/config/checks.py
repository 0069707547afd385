"""The value checks of config keys: each returns what is wrong with a value, or None when it is fine."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], str | None]
"""A value check: returns what is wrong with the value, or None when it is fine."""


def absolute_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"must be an absolute path, got {value!r}"
    if "\0" in value:
        return "must not contain a NUL byte"
    return None


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"

    return check


def listen_address(*, optional: bool) -> Check:
    """``host:port`` with an IP address (or ``localhost``) and a port 0-65535; ``""`` when optional."""

    def check(value: str) -> str | None:
        if value == "" and optional:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            return f"must be host:port with a port from 0 to 65535, got {value!r}"
        host = host.removeprefix("[").removesuffix("]")
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return f"host must be an IP address or localhost, got {host!r}"
        return None

    return check


def non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def dns_label(value: str) -> str | None:
    """RuntimeClass handler names are DNS-1123 labels."""
    if DNS_LABEL.fullmatch(value):
        return None
    return f"must be a DNS-1123 label (lower-case letters, digits and '-', at most 63), got {value!r}"


def at_least(minimum: int) -> Check:
    def check(value: int) -> str | None:
        return None if value >= minimum else f"must be at least {minimum}, got {value}"

    return check


def absolute_paths(values: tuple[str, ...]) -> str | None:
    return next((problem for v in values if (problem := absolute_path(v))), None)
