"""Container commands, as crictl has them: ``ps``, ``inspect``, ``create``, ``start``, ``run``, ``stop``, ``rm``."""

from __future__ import annotations

from functools import partial
from typing import Any

import click

from moorage.cli.client import CriClient
from moorage.cli.common import (
    call,
    client_for,
    created_ago,
    inspect_each,
    load_config,
    name_matches,
    parse_labels,
    print_listing,
    remove_each,
    stop_each,
)
from moorage.cri import pb

CONTAINER_STATES = {
    "created": pb.ContainerState.CONTAINER_CREATED,
    "running": pb.ContainerState.CONTAINER_RUNNING,
    "exited": pb.ContainerState.CONTAINER_EXITED,
    "unknown": pb.ContainerState.CONTAINER_UNKNOWN,
}
STATE_NAMES = {value: name.capitalize() for name, value in CONTAINER_STATES.items()}
HEADER = ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"]


def _resolve(client: CriClient, ref: str) -> tuple[str, bool]:
    """The full id of the container ``ref`` names (itself or a unique prefix), and whether it is running."""
    status = client.container_status(ref).status
    return status.id, status.state == pb.ContainerState.CONTAINER_RUNNING


def _row(c: pb.Container, no_trunc: bool) -> list[str]:
    image = c.image.image or c.image_ref
    if image.startswith("sha256:") and not no_trunc:
        image = image.removeprefix("sha256:")[:13]
    return [
        c.id if no_trunc else c.id[:13],
        image,
        created_ago(c.created_at),
        STATE_NAMES.get(c.state, "Unknown"),
        c.metadata.name,
        str(c.metadata.attempt),
        c.pod_sandbox_id if no_trunc else c.pod_sandbox_id[:13],
    ]


@click.command()
@click.option("--all", "-a", "all_", is_flag=True, help="Containers in every state (else only running ones).")
@click.option("--quiet", "-q", is_flag=True, help="Only container ids.")
@click.option("--id", "container_id", default="", help="Only the container with this id or id prefix.")
@click.option("--pod", "-p", "pod", default="", help="Only containers of this pod (id or id prefix).")
@click.option("--name", help="Only containers whose name matches this regular expression.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Only containers with this label.")
@click.option("--state", type=click.Choice(sorted(CONTAINER_STATES)), help="Only containers in this state.")
@click.option("--no-trunc", is_flag=True, help="Full ids.")
@click.pass_obj
def ps(
    obj: dict[str, Any],
    *,
    all_: bool,
    quiet: bool,
    container_id: str,
    pod: str,
    name: str | None,
    labels: tuple[str, ...],
    state: str | None,
    no_trunc: bool,
) -> None:
    """List containers, newest first, as crictl ps does."""
    filter_ = pb.ContainerFilter(id=container_id, label_selector=parse_labels(labels))
    if state or not all_:
        filter_.state.state = CONTAINER_STATES[state or "running"]
    with client_for(obj) as client:
        pod_id = _resolve_pod(client, pod) if pod else ""
        found = [] if pod_id is None else call(partial(client.list_containers, filter_))
    print_listing(
        found,
        lambda c: name_matches(name, c.metadata.name) and (not pod_id or c.pod_sandbox_id == pod_id),
        quiet=quiet,
        header=HEADER,
        row=partial(_row, no_trunc=no_trunc),
    )


def _resolve_pod(client: CriClient, ref: str) -> str | None:
    from moorage.cli.pods import resolve_pod  # noqa: PLC0415 - only `ps --pod` needs the pods' module

    return resolve_pod(client, ref)


@click.command()
@click.argument("container_ids", metavar="ID...", nargs=-1, required=True)
@click.pass_obj
def inspect(obj: dict[str, Any], container_ids: tuple[str, ...]) -> None:
    """Show containers' status and verbose info as JSON, as crictl inspect does."""
    with client_for(obj) as client:
        inspect_each(container_ids, partial(client.container_status, verbose=True))


def _configs(
    client: CriClient, container_config: str, pod_config: str, pull: bool
) -> tuple[pb.ContainerConfig, pb.PodSandboxConfig]:
    """Both configs from their files, the image pulled if asked; what create and run share."""
    container = load_config(container_config, pb.ContainerConfig())
    sandbox = load_config(pod_config, pb.PodSandboxConfig())
    if pull:
        call(partial(client.pull_image, container.image.image))
    return container, sandbox


@click.command()
@click.argument("pod_id", metavar="POD_ID")
@click.argument("container_config", metavar="CONTAINER.yaml", type=click.Path(exists=True, dir_okay=False))
@click.argument("pod_config", metavar="POD.yaml", type=click.Path(exists=True, dir_okay=False))
@click.option("--pull", is_flag=True, help="Pull the container's image first.")
@click.pass_obj
def create(obj: dict[str, Any], pod_id: str, container_config: str, pod_config: str, pull: bool) -> None:
    """Create a container in pod POD_ID and print its id, as crictl create does."""
    with client_for(obj) as client:
        container, sandbox = _configs(client, container_config, pod_config, pull)
        click.echo(call(partial(client.create_container, pod_id, container, sandbox)))


@click.command()
@click.argument("container_ids", metavar="ID...", nargs=-1, required=True)
@click.pass_obj
def start(obj: dict[str, Any], container_ids: tuple[str, ...]) -> None:
    """Start created containers, as crictl start does."""
    with client_for(obj) as client:
        for container_id in container_ids:
            call(partial(client.start_container, container_id))
            click.echo(container_id)


@click.command()
@click.argument("container_config", metavar="CONTAINER.yaml", type=click.Path(exists=True, dir_okay=False))
@click.argument("pod_config", metavar="POD.yaml", type=click.Path(exists=True, dir_okay=False))
@click.option("--pull", is_flag=True, help="Pull the container's image first.")
@click.option("--runtime", "-r", "runtime_handler", default="", help="Runtime handler (RuntimeClass) of the pod.")
@click.pass_obj
def run(obj: dict[str, Any], container_config: str, pod_config: str, pull: bool, runtime_handler: str) -> None:
    """Run a pod, then a container in it, and print the container's id, as crictl run does.

    When the container cannot be created or started, the pod made for it is removed again.
    """
    with client_for(obj) as client:
        container, sandbox = _configs(client, container_config, pod_config, pull)
        pod_id = call(partial(client.run_pod, sandbox, runtime_handler))
        try:
            container_id = call(partial(client.create_container, pod_id, container, sandbox))
            call(partial(client.start_container, container_id))
        except click.ClickException:
            call(partial(client.remove_pod, pod_id))
            raise
    click.echo(container_id)


@click.command()
@click.argument("container_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--timeout", "-t", "grace", default=0, show_default=True, help="Seconds between TERM and KILL.")
@click.pass_obj
def stop(obj: dict[str, Any], container_ids: tuple[str, ...], grace: int) -> None:
    """Stop running containers, as crictl stop does."""
    with client_for(obj) as client:
        stop_each(container_ids, partial(_resolve, client), partial(client.stop_container, grace=grace), "{id}")


@click.command()
@click.argument("container_ids", metavar="ID...", nargs=-1)
@click.option("--force", "-f", is_flag=True, help="Stop running containers first instead of refusing them.")
@click.option("--all", "-a", "all_", is_flag=True, help="Remove every container.")
@click.pass_obj
def rm(obj: dict[str, Any], container_ids: tuple[str, ...], force: bool, all_: bool) -> None:
    """Remove containers, as crictl rm does."""
    if not container_ids and not all_:
        raise click.UsageError("give container IDs or --all")
    with client_for(obj) as client:
        refs = [c.id for c in call(client.list_containers)] if all_ else list(container_ids)
        remove_each(
            refs,
            partial(_resolve, client),
            client.stop_container,
            client.remove_container,
            force=force,
            refusal="container {id} is running; stop it first or use -f",
            removed="{id}",
        )


COMMANDS = [ps, inspect, create, start, run, stop, rm]
