"""Pod sandbox commands, as crictl has them: ``pods``, ``inspectp``, ``runp``, ``stopp``, ``rmp``."""

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

POD_STATES = {"ready": pb.PodSandboxState.SANDBOX_READY, "notready": pb.PodSandboxState.SANDBOX_NOTREADY}
STATE_NAMES = {pb.PodSandboxState.SANDBOX_READY: "Ready", pb.PodSandboxState.SANDBOX_NOTREADY: "NotReady"}
HEADER = ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]


def resolve_pod(client: CriClient, ref: str) -> str | None:
    """The full id of the pod ``ref`` names (itself or a unique prefix), None if none does."""
    found = call(lambda: client.list_pods(pb.PodSandboxFilter(id=ref)))
    exact = [p.id for p in found if p.id == ref]
    if exact or len(found) == 1:
        return (exact or [found[0].id])[0]
    if found:
        raise click.ClickException(f"pod id prefix {ref!r} matches {len(found)} pods; give more of it")
    return None


def _resolve(client: CriClient, ref: str) -> tuple[str, bool]:
    """The full id of the pod ``ref`` names (itself or a unique prefix), and whether it is ready."""
    status = client.pod_status(ref).status
    return status.id, status.state == pb.PodSandboxState.SANDBOX_READY


def _row(pod: pb.PodSandbox, no_trunc: bool) -> list[str]:
    return [
        pod.id if no_trunc else pod.id[:13],
        created_ago(pod.created_at),
        STATE_NAMES.get(pod.state, "Unknown"),
        pod.metadata.name,
        pod.metadata.namespace,
        str(pod.metadata.attempt),
        pod.runtime_handler or "(default)",
    ]


@click.command()
@click.option("--quiet", "-q", is_flag=True, help="Only pod ids.")
@click.option("--id", "pod_id", default="", help="Only the pod with this id or id prefix.")
@click.option("--name", help="Only pods whose name matches this regular expression.")
@click.option("--namespace", help="Only pods whose namespace matches this regular expression.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Only pods with this label (repeatable).")
@click.option("--state", type=click.Choice(sorted(POD_STATES)), help="Only pods in this state.")
@click.option("--no-trunc", is_flag=True, help="Full pod ids.")
@click.pass_obj
def pods(
    obj: dict[str, Any],
    *,
    quiet: bool,
    pod_id: str,
    name: str | None,
    namespace: str | None,
    labels: tuple[str, ...],
    state: str | None,
    no_trunc: bool,
) -> None:
    """List pod sandboxes, newest first, as crictl pods does."""
    filter_ = pb.PodSandboxFilter(id=pod_id, label_selector=parse_labels(labels))
    if state:
        filter_.state.state = POD_STATES[state]
    with client_for(obj) as client:
        found = call(lambda: client.list_pods(filter_))
    print_listing(
        found,
        lambda p: name_matches(name, p.metadata.name) and name_matches(namespace, p.metadata.namespace),
        quiet=quiet,
        header=HEADER,
        row=partial(_row, no_trunc=no_trunc),
    )


@click.command()
@click.argument("pod_ids", metavar="ID...", nargs=-1, required=True)
@click.pass_obj
def inspectp(obj: dict[str, Any], pod_ids: tuple[str, ...]) -> None:
    """Show pod sandboxes' status and verbose info as JSON, as crictl inspectp does."""
    with client_for(obj) as client:
        inspect_each(pod_ids, partial(client.pod_status, verbose=True))


@click.command()
@click.argument("pod_config", metavar="POD.yaml", type=click.Path(exists=True, dir_okay=False))
@click.option("--runtime", "-r", "runtime_handler", default="", help="Runtime handler (RuntimeClass) of the pod.")
@click.pass_obj
def runp(obj: dict[str, Any], pod_config: str, runtime_handler: str) -> None:
    """Run a pod sandbox from a PodSandboxConfig file and print its id, as crictl runp does."""
    config = load_config(pod_config, pb.PodSandboxConfig())
    with client_for(obj) as client:
        click.echo(call(lambda: client.run_pod(config, runtime_handler)))


@click.command()
@click.argument("pod_ids", metavar="ID...", nargs=-1, required=True)
@click.pass_obj
def stopp(obj: dict[str, Any], pod_ids: tuple[str, ...]) -> None:
    """Stop pod sandboxes and all their containers, as crictl stopp does."""
    with client_for(obj) as client:
        stop_each(pod_ids, partial(_resolve, client), client.stop_pod, "Stopped sandbox {id}")


@click.command()
@click.argument("pod_ids", metavar="ID...", nargs=-1)
@click.option("--force", "-f", is_flag=True, help="Stop ready pods first instead of refusing them.")
@click.option("--all", "-a", "all_", is_flag=True, help="Remove every pod.")
@click.pass_obj
def rmp(obj: dict[str, Any], pod_ids: tuple[str, ...], force: bool, all_: bool) -> None:
    """Remove pod sandboxes and all their containers, as crictl rmp does."""
    if not pod_ids and not all_:
        raise click.UsageError("give pod IDs or --all")
    with client_for(obj) as client:
        refs = [p.id for p in call(client.list_pods)] if all_ else list(pod_ids)
        remove_each(
            refs,
            partial(_resolve, client),
            client.stop_pod,
            client.remove_pod,
            force=force,
            refusal="pod sandbox {id} is ready; stop it first (stopp) or use -f",
            removed="Removed sandbox {id}",
        )


COMMANDS = [pods, inspectp, runp, stopp, rmp]
