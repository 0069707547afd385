"""process.args, env, cwd, rlimits and oomScoreAdj: the parts of ``process`` that are not about privilege."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from moorage.cri import pb
from moorage.errors import InvalidArgument

log = structlog.get_logger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_NOFILE = 1048576  # containerd's default RLIMIT_NOFILE (soft = hard)
NO_COMMAND = "no command specified: the container config and the image set neither command nor entrypoint/cmd"


def _strings(value: Any) -> list[str]:
    """An image config list field (Entrypoint, Cmd, Env) as strings; null and absent are empty."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def args(container: pb.ContainerConfig, image_config: Mapping[str, Any]) -> list[str]:
    """Kubernetes' command/args rule.

    ============  =========  =====================================
    command set   args set   process.args
    ============  =========  =====================================
    no            no         image Entrypoint + image Cmd
    no            yes        image Entrypoint + args
    yes           no         command (the image Cmd is ignored)
    yes           yes        command + args
    ============  =========  =====================================
    """
    if container.command:
        result = [*container.command, *container.args]
    else:
        tail = list(container.args) if container.args else _strings(image_config.get("Cmd"))
        result = [*_strings(image_config.get("Entrypoint")), *tail]
    if not result:
        raise InvalidArgument(NO_COMMAND)
    return result


def env(container: pb.ContainerConfig, image_config: Mapping[str, Any], hostname: str) -> list[str]:
    """HOSTNAME, then the image's Env, then the CRI envs, each later one replacing an earlier one with its key.

    Keys keep the position of their first appearance, as containerd's ``WithEnv`` does. PATH gets the usual default
    when nothing sets it.
    """
    merged: dict[str, str] = {}

    def put(entry: str) -> None:
        key, sep, value = entry.partition("=")
        if not key:
            return
        merged[key] = f"{key}={value}" if sep else key

    put(f"HOSTNAME={hostname}")
    for entry in _strings(image_config.get("Env")):
        put(entry)
    for kv in container.envs:
        if not kv.key:
            raise InvalidArgument("envs: an environment variable has an empty key")
        try:
            value = kv.value.decode()
        except UnicodeDecodeError:
            raise InvalidArgument(f"envs: the value of {kv.key!r} is not valid UTF-8") from None
        put(f"{kv.key}={value}")
    if "PATH" not in merged:
        merged["PATH"] = f"PATH={DEFAULT_PATH}"
    return list(merged.values())


def cwd(container: pb.ContainerConfig, image_config: Mapping[str, Any]) -> str:
    value = container.working_dir or str(image_config.get("WorkingDir") or "") or "/"
    if not value.startswith("/"):
        raise InvalidArgument(f"working_dir {value!r} must be an absolute path")
    return value


def rlimits(nofile_ceiling: int | None) -> list[dict[str, Any]]:
    """RLIMIT_NOFILE at containerd's 1048576, lowered to ``nofile_ceiling`` (the daemon's own hard limit when it
    lacks CAP_SYS_RESOURCE: the runtime could not raise it, and the create would fail)."""
    value = DEFAULT_NOFILE if nofile_ceiling is None else min(DEFAULT_NOFILE, nofile_ceiling)
    return [{"type": "RLIMIT_NOFILE", "hard": value, "soft": value}]


def oom_score_adj(resources: pb.LinuxContainerResources, floor: int, container_name: str) -> int:
    """The requested oom_score_adj, raised to the daemon's own: without CAP_SYS_RESOURCE the kernel refuses lower."""
    requested = int(resources.oom_score_adj)
    if requested < floor:
        log.warning(
            "oom_score_adj below the daemon's own is not allowed; clamping it",
            container=container_name,
            requested=requested,
            applied=floor,
        )
        return floor
    return requested


def build(
    *,
    container: pb.ContainerConfig,
    image_config: Mapping[str, Any],
    hostname: str,
    user: Mapping[str, Any],
    capabilities: Mapping[str, Sequence[str]],
    no_new_privileges: bool,
    oom_score_adj_value: int,
    nofile_ceiling: int | None,
) -> dict[str, Any]:
    return {
        "terminal": bool(container.tty),
        "user": dict(user),
        "args": args(container, image_config),
        "env": env(container, image_config, hostname),
        "cwd": cwd(container, image_config),
        "capabilities": {k: list(v) for k, v in capabilities.items()},
        "rlimits": rlimits(nofile_ceiling),
        "noNewPrivileges": no_new_privileges,
        "oomScoreAdj": oom_score_adj_value,
    }
