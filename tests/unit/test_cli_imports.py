"""The client commands import only what they need: ``moorage ps`` must not pay for the daemon, the config's
declarations, the streaming client or the node's preflight (issue 18: a client command answers in 100 ms)."""

from __future__ import annotations

import json
import subprocess
import sys

import click

from moorage.cli import containers, logs, node, pods, streams
from moorage.cli.main import LAZY_COMMANDS, cli

HEAVY = ["moorage.daemon", "moorage.config", "moorage.cli.streams", "moorage.streaming.client", "moorage.cli.node",
         "moorage.node.preflight", "moorage.cli.logs", "yaml", "importlib.metadata",
         "google.protobuf.json_format"]  # fmt: skip


def imported_by(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


def test_the_cli_and_the_ps_command_import_nothing_heavy() -> None:
    loaded = imported_by("from moorage.cli.main import cli; cli.get_command(None, 'ps')")
    assert "moorage.cli.containers" in loaded
    assert sorted(loaded & set(HEAVY)) == []


def test_every_command_of_the_cli_modules_is_listed_under_its_name() -> None:
    modules = [*pods.COMMANDS, *containers.COMMANDS, logs.logs, *streams.COMMANDS, node.check, node.node_group]
    ctx = click.Context(cli)
    assert {c.name: c for c in modules} == {name: cli.get_command(ctx, name) for name in LAZY_COMMANDS}
    assert set(LAZY_COMMANDS) <= set(cli.list_commands(ctx))
    assert {"serve", "config", "version", "info", "pull", "images", "rmi", "image"} <= set(cli.list_commands(ctx))


def test_the_version_is_still_known() -> None:
    import moorage  # noqa: PLC0415

    assert moorage.__version__
    assert "importlib.metadata" in imported_by("import moorage; moorage.__version__")
