"""The ``moorage`` command: the daemon (``serve``), config tools, and a CRI client for node operators."""

from __future__ import annotations

import importlib
import os
import sys
from functools import partial
from typing import Any

import click
import grpc

from moorage.cli.client import DEFAULT_ENDPOINT
from moorage.cli.common import call as _call
from moorage.cli.common import client_for as _client
from moorage.cli.common import config_option
from moorage.cli.common import rpc_error as _rpc_error
from moorage.cli.common import table as _table
from moorage.cri import pb

LAZY_COMMANDS = {
    **{name: f"moorage.cli.pods:{name}" for name in ("pods", "inspectp", "runp", "stopp", "rmp")},
    **{name: f"moorage.cli.containers:{name}" for name in ("ps", "inspect", "create", "start", "run", "stop", "rm")},
    "logs": "moorage.cli.logs:logs",
    "exec": "moorage.cli.streams:exec_command",
    "attach": "moorage.cli.streams:attach_command",
    "port-forward": "moorage.cli.streams:port_forward_command",
    "check": "moorage.cli.node:check",
    "node": "moorage.cli.node:node_group",
}
"""Commands defined in the other cli modules, by name: a module is imported when one of its commands runs (or
``--help`` lists them all), so ``moorage ps`` does not import the streaming client or the node's preflight."""


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
@config_option
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
    from moorage.errors import ConfigError, StartupError, StoreError  # noqa: PLC0415

    QUICK_EXIT.clear()  # the daemon ends the usual way, after its own shutdown

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
    from moorage import config as config_mod  # noqa: PLC0415 - the client commands need none of its declarations

    click.echo(config_mod.render_toml(), nl=False)


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE; exit non-zero naming the first bad key."""
    from moorage import config as config_mod  # noqa: PLC0415
    from moorage.errors import ConfigError  # noqa: PLC0415

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
    import json  # noqa: PLC0415 - only the commands printing JSON pay for json and protobuf's json_format

    from google.protobuf import json_format  # noqa: PLC0415

    out: dict[str, Any] = {
        "status": json_format.MessageToDict(status.status, always_print_fields_with_no_presence=True),
        "runtimeHandlers": [json_format.MessageToDict(h) for h in status.runtime_handlers],
        "cgroupDriver": pb.CgroupDriver.Name(runtime_config.linux.cgroup_driver),
    }
    for name, value in status.info.items():
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    click.echo(json.dumps(out, indent=2))


@cli.command()
@click.argument("image")
@click.option("--creds", help="USER:PASSWORD for the registry (else the daemon's credential files).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the image id.")
@click.pass_obj
def pull(obj: dict[str, Any], image: str, creds: str | None, quiet: bool) -> None:
    """Pull IMAGE, showing each layer's progress, as docker pull does."""
    username, _, password = (creds or "").partition(":")
    from moorage.cli.progress import PullDisplay  # noqa: PLC0415 - only pull shows progress

    display = PullDisplay(sys.stdout, sys.stdout.isatty())
    result: dict[str, Any] = {}
    with _client(obj) as client:
        try:
            for message in client.pull_with_progress(image, username, password):
                if "progress" in message and not quiet:
                    display.update(message["progress"])
                result = message
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from exc
    if quiet:
        click.echo(result.get("image_id", ""))
        return
    for name in result.get("repo_digests", []):
        click.echo(f"Digest: {name.partition('@')[2]}")
    click.echo(f"Image is up to date for {result.get('image_id', '')}")


@cli.command()
@click.argument("image", required=False, default="")
@click.option("--quiet", "-q", is_flag=True, help="Only image ids.")
@click.option("--digests", is_flag=True, help="Show repo digests.")
@click.option("--no-trunc", is_flag=True, help="Full image ids.")
@click.pass_obj
def images(obj: dict[str, Any], image: str, quiet: bool, digests: bool, no_trunc: bool) -> None:
    """List images (those IMAGE names, if given), as crictl images does."""
    from moorage.cli.progress import human_bytes  # noqa: PLC0415

    with _client(obj) as client:
        found = _call(lambda: client.list_images(image))
    if quiet:
        for img in found:
            click.echo(img.id)
        return
    rows = [["IMAGE", "TAG", *(["DIGEST"] if digests else []), "IMAGE ID", "SIZE"]]
    for img in found:
        image_id = img.id if no_trunc else img.id.removeprefix("sha256:")[:13]
        digest = img.repo_digests[0].partition("@")[2][:20] if img.repo_digests else "<none>"
        tags = list(img.repo_tags) or [f"{(list(img.repo_digests) or ['<none>@'])[0].partition('@')[0]}:<none>"]
        for tag in tags:
            repo, _, version = tag.rpartition(":")
            rows.append([repo, version, *([digest] if digests else []), image_id, human_bytes(img.size)])
    _table(rows)


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.pass_obj
def rmi(obj: dict[str, Any], images: tuple[str, ...]) -> None:
    """Remove IMAGES (by id, tag or digest) with all their names, as crictl rmi does."""
    with _client(obj) as client:
        for image in images:
            status = _call(partial(client.image_status, image))
            _call(partial(client.remove_image, image))
            names = list(status.image.repo_tags) + list(status.image.repo_digests) if status.HasField("image") else []
            for name in names or [image]:
                click.echo(f"Deleted: {name}")


@cli.group("image")
def image_group() -> None:
    """Inspect, import and account for images."""


@image_group.command("inspect")
@click.argument("image")
@click.pass_obj
def image_inspect(obj: dict[str, Any], image: str) -> None:
    """Show IMAGE's status and config as JSON, as crictl inspecti does."""
    with _client(obj) as client:
        response = _call(lambda: client.image_status(image, verbose=True))
    if not response.HasField("image"):
        raise click.ClickException(f"no such image: {image}")
    import json  # noqa: PLC0415

    from google.protobuf import json_format  # noqa: PLC0415

    out: dict[str, Any] = {"status": json_format.MessageToDict(response.image)}
    for name, value in response.info.items():
        out[name] = json.loads(value)
    click.echo(json.dumps(out, indent=2))


@image_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def image_import(obj: dict[str, Any], file: str) -> None:
    """Load the images of FILE (docker save or OCI archive) into the store, for nodes without registries."""
    with _client(obj) as client:
        result = _call(lambda: client.import_archive(os.path.abspath(file)))
    for img in result["images"]:
        click.echo(f"Loaded image {img['image_id']} {' '.join(img['repo_tags'])}".rstrip())


@image_group.command("fsinfo")
@click.pass_obj
def image_fsinfo(obj: dict[str, Any]) -> None:
    """Show the image filesystem's usage as JSON, as crictl imagefsinfo does."""
    with _client(obj) as client:
        response = _call(client.image_fs_info)
    import json  # noqa: PLC0415

    from google.protobuf import json_format  # noqa: PLC0415

    click.echo(json.dumps(json_format.MessageToDict(response), indent=2))


QUICK_EXIT = {"after client commands"}
"""Not empty: the process ends with ``os._exit`` once the command is done and its output flushed. The
interpreter's own shutdown (grpc's threads, every module torn down) took about 20 ms of a ``moorage ps``, for
nothing a client command needs; ``serve`` empties it."""


def main() -> None:
    try:
        cli(prog_name="moorage")
    except SystemExit as exc:
        if not QUICK_EXIT:
            raise
        code = exc.code
    else:
        code = 0
    if isinstance(code, str):  # sys.exit("message"), as the interpreter would report it
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (moorage ps | head): nothing more to say
            code = code or 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
