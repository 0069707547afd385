"""``moorage check`` (node preflight) and ``moorage node setup`` (kernel modules and sysctls); no daemon needed.

The hidden ``--proc-dir``, ``--sys-dir``, ``--run-dir`` and ``--modprobe`` options point them at fake trees for tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from moorage import config as config_mod
from moorage.cli.common import config_option
from moorage.errors import ConfigError
from moorage.node import preflight
from moorage.node import setup as node_setup

F = TypeVar("F", bound=Callable[..., Any])


def _roots_options(fn: F) -> F:
    """The host roots, hidden: tests point them at temp trees."""
    for name, default in (("run", "/run"), ("sys", "/sys"), ("proc", "/proc")):
        fn = click.option(
            f"--{name}-dir",
            default=default,
            show_default=True,
            hidden=True,
            type=click.Path(file_okay=False, path_type=Path),
            help=f"Where the host's {default} is read.",
        )(fn)
    return fn


KUBELET_CONFIG = Path("/var/lib/kubelet/config.yaml")


@click.command("check")
@config_option
@click.option(
    "--kubelet-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The kubelet's KubeletConfiguration file: compare its cgroupDriver and failCgroupV1 too. "
    f"Default: {KUBELET_CONFIG} (where kubeadm writes it) when that file exists.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@_roots_options
def check(
    *,
    config_path: str | None,
    kubelet_config: Path | None,
    as_json: bool,
    proc_dir: Path,
    sys_dir: Path,
    run_dir: Path,
) -> None:
    """Check that this node is ready to run pods: kernel modules, sysctls, runtimes, conmon, CNI, cgroups.

    One line per check: OK, WARN or FAIL, its name, what was found and, unless OK, the fix.
    Exits 1 when any check fails.
    """
    try:
        config = config_mod.load(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    roots = preflight.HostRoots(proc=proc_dir, sys=sys_dir, run=run_dir)
    if kubelet_config is None and KUBELET_CONFIG.is_file():
        kubelet_config = KUBELET_CONFIG
    results = preflight.run_checks(config, roots, kubelet_config, user_namespaces=True)
    failed = [r for r in results if not r.ok]
    if as_json:
        out = {"ok": not failed, "checks": [r.to_dict() for r in results]}
        click.echo(json.dumps(out, indent=2))
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            fix = f"; fix: {r.fix}" if r.status != "OK" and r.fix else ""
            click.echo(f"{r.status:<4}  {r.name:<{width}}  {r.detail}{fix}")
        warned = sum(1 for r in results if r.warning)
        click.echo(f"{len(failed)} failed, {warned} warnings, {len(results) - len(failed) - warned} ok")
    if failed:
        raise SystemExit(1)


@click.group("node")
def node_group() -> None:
    """Prepare this host to be a Kubernetes node."""


@node_group.command("setup")
@click.option(
    "--etc-dir",
    default="/etc",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where modules-load.d/moorage.conf and sysctl.d/99-moorage.conf are written.",
)
@click.option("--modprobe", default="modprobe", show_default=True, hidden=True, help="The modprobe command.")
@_roots_options
def setup(*, etc_dir: Path, modprobe: str, proc_dir: Path, sys_dir: Path, run_dir: Path) -> None:
    """Load overlay and br_netfilter and turn on IP forwarding and bridge netfilter, now and at every boot.

    Prints each change made; a second run prints "nothing to change".
    """
    roots = preflight.HostRoots(proc=proc_dir, sys=sys_dir, run=run_dir)
    changed = False
    try:
        for change in node_setup.steps(etc_dir, roots, (modprobe,)):
            click.echo(change)
            changed = True
    except node_setup.SetupError as exc:
        raise click.ClickException(str(exc)) from exc
    if not changed:
        click.echo("nothing to change")
