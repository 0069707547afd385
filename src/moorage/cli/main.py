"""The ``moorage`` command: the daemon (``serve``), config tools, and a CRI client for node operators."""

from __future__ import annotations

import json
from typing import Any

import click
import grpc
from google.protobuf import json_format

from moorage import config as config_mod
from moorage.cli.client import DEFAULT_ENDPOINT, CriClient
from moorage.errors import ConfigError, StartupError, StoreError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--endpoint",
    envvar="MOORAGE_ENDPOINT",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="CRI socket of the daemon the client commands talk to.",
)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for each CRI call.")
@click.version_option(package_name="moorage")
@click.pass_context
def cli(ctx: click.Context, endpoint: str, timeout: float) -> None:
    """Moorage, a Kubernetes container runtime (CRI v1)."""
    ctx.obj = {"endpoint": endpoint, "timeout": timeout}


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Config file [default: {config_mod.DEFAULT_CONFIG_PATH} if it exists].",
)
@click.option("--root", help="Overrides the config's root (persistent state).")
@click.option("--state", help="Overrides the config's state (runtime state).")
@click.option("--socket", help="Overrides the config's socket (the CRI unix socket).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides the config's log.level.",
)
def serve(
    config_path: str | None, root: str | None, state: str | None, socket: str | None, log_level: str | None
) -> None:
    """Run the daemon."""
    from moorage import daemon  # noqa: PLC0415 - the client commands need none of the daemon's parts

    flags = {"root": root, "state": state, "socket": socket, "log.level": log_level}
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        daemon.serve(config_path, overrides)
    except (ConfigError, StartupError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc


@cli.group("config")
def config_group() -> None:
    """Print or check configuration files."""


@config_group.command("default")
def config_default() -> None:
    """Print the complete default config, commented."""
    click.echo(config_mod.render_toml(), nl=False)


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE; exit non-zero naming the first bad key."""
    try:
        config_mod.load(file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{file}: ok")


@cli.command()
@click.pass_obj
def version(obj: dict[str, Any]) -> None:
    """Show the runtime's name and versions, as crictl version does."""
    with _client(obj) as client:
        v = _call(client.version)
    click.echo(
        f"Version:  {v.version}\nRuntimeName:  {v.runtime_name}\n"
        f"RuntimeVersion:  {v.runtime_version}\nRuntimeApiVersion:  {v.runtime_api_version}"
    )


@cli.command()
@click.pass_obj
def info(obj: dict[str, Any]) -> None:
    """Show the runtime's status, conditions and config as JSON, as crictl info does."""
    with _client(obj) as client:
        status = _call(lambda: client.status(verbose=True))
        runtime_config = _call(client.runtime_config)
    out: dict[str, Any] = {
        "status": json_format.MessageToDict(status.status, always_print_fields_with_no_presence=True),
        "runtimeHandlers": [json_format.MessageToDict(h) for h in status.runtime_handlers],
        "cgroupDriver": runtime_config.linux.DESCRIPTOR.fields_by_name["cgroup_driver"]
        .enum_type.values_by_number[runtime_config.linux.cgroup_driver]
        .name,
    }
    for name, value in status.info.items():
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    click.echo(json.dumps(out, indent=2))


def _client(obj: dict[str, Any]) -> CriClient:
    try:
        return CriClient(obj["endpoint"], obj["timeout"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoint") from exc


def _call(fn: Any) -> Any:
    try:
        return fn()
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise click.ClickException(f"{code}: {details}") from exc


def main() -> None:
    cli(prog_name="moorage")


if __name__ == "__main__":
    main()
