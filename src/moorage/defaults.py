"""Where moorage looks on a node by default: known to the daemon's config and to the client commands, which
must not import the config's declarations just to name the file (the CLI imports only what a command needs)."""

from __future__ import annotations

DEFAULT_CONFIG_PATH = "/etc/moorage/config.toml"
