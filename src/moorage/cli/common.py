"""What every client command shares: the client from the group's options, gRPC errors as click errors, tables,
and the listing, inspect, stop and remove loops that the pod and container commands run alike."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar

import click
import grpc
from google.protobuf.message import Message

from moorage.cli.client import CriClient
from moorage.defaults import DEFAULT_CONFIG_PATH

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class Listed(Protocol):
    """What ``ps`` and ``pods`` list: a container or a pod sandbox."""

    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> int: ...


class StatusResponse(Protocol):
    """What ``inspect`` and ``inspectp`` show: a ContainerStatusResponse or a PodSandboxStatusResponse."""

    @property
    def status(self) -> Message: ...

    @property
    def info(self) -> Mapping[str, str]: ...


L = TypeVar("L", bound=Listed)


def client_for(obj: dict[str, Any]) -> CriClient:
    try:
        return CriClient(obj["endpoint"], obj["timeout"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoint") from exc


def call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except grpc.RpcError as exc:
        raise rpc_error(exc) from exc


def rpc_error(exc: grpc.RpcError) -> click.ClickException:
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return click.ClickException(f"{code}: {details}")


def table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def print_listing(
    found: Iterable[L], keep: Callable[[L], bool], *, quiet: bool, header: list[str], row: Callable[[L], list[str]]
) -> None:
    """crictl's listing: newest first, only what ``keep`` passes; the ids alone with -q, else a table of ``row``s."""
    shown = [item for item in sorted(found, key=lambda item: item.created_at, reverse=True) if keep(item)]
    if quiet:
        for item in shown:
            click.echo(item.id)
        return
    table([header, *map(row, shown)])


def inspect_each(refs: Iterable[str], status: Callable[[str], StatusResponse]) -> None:
    """crictl's inspect layout for each of ``refs``; ``status`` asks for the verbose status of one."""
    for ref in refs:
        response = call(partial(status, ref))
        click.echo(inspect_output(response.status, response.info))


def stop_each(
    refs: Iterable[str], resolve: Callable[[str], tuple[str, bool]], stop: Callable[[str], object], stopped: str
) -> None:
    """Stop what each of ``refs`` names and print ``stopped`` (``{id}``: its full id), as crictl stop and stopp do.

    ``resolve`` maps an id or id prefix to the full id and whether the object is live (running, ready).
    """
    for ref in refs:
        full_id, _ = call(partial(resolve, ref))
        call(partial(stop, full_id))
        click.echo(stopped.format(id=full_id))


def remove_each(
    refs: Iterable[str],
    resolve: Callable[[str], tuple[str, bool]],
    stop: Callable[[str], object],
    remove: Callable[[str], object],
    *,
    force: bool,
    refusal: str,
    removed: str,
) -> None:
    """Remove what each of ``refs`` names and print ``removed``, as crictl rm and rmp do.

    A live object is stopped first when ``force`` is given, else refused with ``refusal``; both messages get the full
    id as ``{id}``. ``resolve`` is as for :func:`stop_each`.
    """
    for ref in refs:
        full_id, live = call(partial(resolve, ref))
        if live:
            if not force:
                raise click.ClickException(refusal.format(id=full_id))
            call(partial(stop, full_id))
        call(partial(remove, full_id))
        click.echo(removed.format(id=full_id))


def human_duration(seconds: float) -> str:
    """A duration as docker and crictl word it (go-units HumanDuration)."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def created_ago(created_at_ns: int) -> str:
    return human_duration(time.time() - created_at_ns / 1e9) + " ago"


def parse_labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


def name_matches(pattern: str | None, name: str) -> bool:
    """crictl's --name: a regular expression searched in the name."""
    if not pattern:
        return True
    try:
        return re.search(pattern, name) is not None
    except re.error as exc:
        raise click.BadParameter(f"{pattern!r}: {exc}", param_hint="--name") from exc


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Config file [default: {DEFAULT_CONFIG_PATH} if it exists].",
)
"""The daemon's config file, for the commands that read it (serve, config check, check, node setup)."""


def load_config(path: str, message: M) -> M:
    """A CRI config (ContainerConfig, PodSandboxConfig) from a JSON or YAML file in crictl's format.

    Field names are the proto's, in snake_case or lowerCamelCase; a ``.json`` file is read as strict JSON, any
    other as YAML (of which JSON is a subset)."""
    import json  # noqa: PLC0415 - only the commands that read a config file pay for these
    from pathlib import Path  # noqa: PLC0415

    import yaml  # noqa: PLC0415
    from google.protobuf import json_format  # noqa: PLC0415

    try:
        text = Path(path).read_text()
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"want a mapping of the {message.DESCRIPTOR.name} fields, got {type(data).__name__}")
        json_format.ParseDict(_plain_env_values(data), message)
    except (OSError, ValueError, yaml.YAMLError, json_format.ParseError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    return message


def _plain_env_values(data: dict[str, Any]) -> dict[str, Any]:
    """``envs`` values as plain text, as cri-api's KeyValue JSON has them (the proto field is bytes, whose
    protobuf JSON form would be base64)."""
    import base64  # noqa: PLC0415

    envs = data.get("envs")
    if not isinstance(envs, list):
        return data
    plain = [
        {**kv, "value": base64.b64encode(str(kv["value"]).encode()).decode()}
        if isinstance(kv, dict) and kv.get("value") is not None
        else kv
        for kv in envs
    ]
    return {**data, "envs": plain}


def inspect_output(status: Message, info: Any) -> str:
    """crictl's inspect layout: the status message, then each verbose info entry parsed as JSON."""
    import json  # noqa: PLC0415 - only inspect commands pay for json and protobuf's json_format

    from google.protobuf import json_format  # noqa: PLC0415

    out: dict[str, Any] = {"status": json_format.MessageToDict(status, always_print_fields_with_no_presence=True)}
    for name, value in info.items():
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return json.dumps(out, indent=2)
