"""Where moorage looks on a node by default: known to the daemon's config and to the client commands, which
must not import the config's declarations just to name the file (the CLI imports only what a command needs)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_CONFIG_PATH = "/etc/moorage/config.toml"


def helper(name: str) -> Path:
    """One of moorage's static C helpers (``pause``, ``pinns``): the one ``make`` builds in the source tree
    (``build/<name>/<name>``) when there is one, else the one the Debian package installs next to its virtualenv
    (``<venv>/libexec/<name>``, i.e. /usr/lib/moorage/libexec/<name>)."""
    from pathlib import Path  # noqa: PLC0415 - a client command imports this module for the config path only

    source_tree_build = Path(__file__).resolve().parents[2] / "build"  # make's output, in moorage's checkout
    built = source_tree_build / name / name
    return built if built.exists() else Path(sys.prefix) / "libexec" / name
