"""Reading the files of one cgroup directory: single values, ``key value`` tables, limits and member pids.

Every reader answers ``None`` (or an empty table) for a file that is missing or unreadable, so a cgroup that is
gone, a controller that is not enabled or a kernel without the file reads as unknown instead of failing.
"""

from __future__ import annotations

from pathlib import Path

UNLIMITED = 1 << 62
"""Limits at or above this mean no limit (v1 writes PAGE_COUNTER_MAX pages as bytes)."""


def read_text(path: Path) -> str | None:
    """The file's content without surrounding white space; None if it is missing or unreadable."""
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_int(path: Path) -> int | None:
    """A file holding one integer; None if it is missing, unreadable or ``max``."""
    text = read_text(path)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def read_limit(path: Path) -> int | None:
    """A limit file as cAdvisor reports it: its value, 0 for no limit (``max``, -1, v1's PAGE_COUNTER_MAX), None
    if the file is missing or holds no number."""
    text = read_text(path)
    if text is None:
        return None
    if text == "max":
        return 0
    try:
        value = int(text)
    except ValueError:
        return None
    return 0 if value < 0 or value >= UNLIMITED else value


def limit_or_none(value: int | None) -> int | None:
    """A limit file's value, None for no limit (``max``, or v1's huge PAGE_COUNTER_MAX)."""
    return None if value is None or value >= UNLIMITED else value


def flat_keyed(path: Path) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat); empty if the file is gone."""
    text = read_text(path)
    if text is None:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def member_pids(group: Path) -> tuple[int, ...] | None:
    """The processes (not threads) in the cgroup itself, from ``cgroup.procs``; None if it cannot be read."""
    text = read_text(group / "cgroup.procs")
    if text is None:
        return None
    return tuple(int(line) for line in text.split() if line.isdigit())
