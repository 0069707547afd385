"""Executing one CNI plugin, as the spec's calling convention has it.

The verb and the attachment go in environment variables (``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``,
``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``), the plugin's config on stdin as a JSON object completed by the
runtime (:func:`plugin_stdin`: the network's ``name`` and ``cniVersion``, the ``prevResult`` of the chain and
the ``runtimeConfig`` of the capabilities the plugin declares). Exit 0 means success, with the result on
stdout for ADD; anything else is a failure, described by the error object ``{"code", "msg", "details"}`` the
plugin printed on stdout if it printed one.

Every way a plugin can fail becomes a :class:`PluginError` (UNAVAILABLE) whose message names the plugin, the
network and the verb, and carries the plugin's message, its exit status and the tail of its stderr. A plugin
that runs longer than the timeout is killed with its whole process group (each plugin starts a session of its
own) and reported as :class:`PluginTimeout`. A plugin binary not in any bin dir is :class:`PluginNotFound`
(FAILED_PRECONDITION: the node is not set up for the network it is configured with).

Example::

    stdin = plugin_stdin("podnet", "1.0.0", plugin_conf, runtime_config={}, prev_result=None)
    result = await exec_plugin(PluginCall("bridge", path, "ADD", stdin, env), timeout=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.errors import FailedPrecondition, Unavailable

MAX_SHOWN = 600  # characters of a plugin's stdout/stderr quoted in an error
KILL_GRACE = 5.0  # seconds to wait for a killed plugin to be reaped

# Well-known error codes of the spec (1-99 are reserved for it).
ERROR_CODES = {
    1: "incompatible CNI version",
    2: "unsupported field in network configuration",
    3: "container unknown or does not exist",
    4: "invalid necessary environment variables",
    5: "I/O failure",
    6: "failed to decode content",
    7: "invalid network config",
    11: "try again later",
    50: "plugin not available",
    51: "plugin not available, existing containers in the network may have limited connectivity",
}


class PluginNotFound(FailedPrecondition):
    """A plugin the network config names is not an executable in any CNI bin dir."""


class PluginError(Unavailable):
    """A plugin failed: non-zero exit, an error object, output that is not a result, or it hung."""

    def __init__(self, message: str, *, plugin: str, command: str, code: int | None = None, details: str = "") -> None:
        super().__init__(message)
        self.plugin = plugin
        self.command = command
        self.code = code
        self.details = details


class PluginTimeout(PluginError):
    """A plugin did not finish within the timeout and was killed."""


@dataclass(frozen=True)
class PluginCall:
    plugin: str  # the plugin type, for messages
    path: Path
    command: str  # ADD, DEL, CHECK, STATUS, GC, VERSION
    stdin: Mapping[str, Any]
    env: Mapping[str, str]  # the CNI_* variables (see :func:`cni_env`)
    network: str = ""

    @property
    def label(self) -> str:
        where = f' (network "{self.network}")' if self.network else ""
        return f"CNI plugin {self.plugin}{where} {self.command}"


def plugin_stdin(
    network: str,
    cni_version: str,
    plugin: Mapping[str, Any],
    *,
    runtime_config: Mapping[str, Any] | None = None,
    prev_result: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object a plugin reads on stdin: its config with the runtime's fields set (or removed)."""
    conf = dict(plugin)
    conf["name"] = network
    conf["cniVersion"] = cni_version
    for key, value in (("runtimeConfig", runtime_config), ("prevResult", prev_result)):
        if value:
            conf[key] = dict(value)
        else:
            conf.pop(key, None)
    if extra:
        conf.update(extra)
    return conf


def cni_env(
    command: str,
    bin_dirs: Sequence[Path],
    *,
    container_id: str = "",
    netns: str = "",
    ifname: str = "",
    args: str = "",
) -> dict[str, str]:
    """The CNI_* variables for a call; STATUS, GC and VERSION take only CNI_COMMAND and CNI_PATH."""
    env = {"CNI_COMMAND": command, "CNI_PATH": os.pathsep.join(str(d) for d in bin_dirs)}
    if command in ("ADD", "DEL", "CHECK"):
        env.update(CNI_CONTAINERID=container_id, CNI_NETNS=netns, CNI_IFNAME=ifname, CNI_ARGS=args)
    return env


async def exec_plugin(call: PluginCall, timeout: float) -> Any:
    """Run the plugin; return its decoded stdout for ADD and VERSION (a JSON object), None for other verbs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(call.env)
    stdin = json.dumps(call.stdin).encode()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(call.path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group, so a timeout kills whatever it started too
        )
    except OSError as exc:
        raise PluginError(
            f"{call.label}: cannot execute {call.path}: {exc.strerror or exc}", plugin=call.plugin, command=call.command
        ) from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        await _kill(proc)
        raise PluginTimeout(
            f"{call.label} did not finish within {timeout:g}s (hung?); killed it",
            plugin=call.plugin,
            command=call.command,
        ) from None
    except BaseException:
        await asyncio.shield(_kill(proc))
        raise
    returncode = proc.returncode
    assert returncode is not None
    if returncode != 0:
        raise _failure(call, returncode, stdout, stderr)
    if call.command not in ("ADD", "VERSION"):
        return None
    try:
        decoded = json.loads(stdout)
    except (UnicodeDecodeError, json.JSONDecodeError):
        decoded = None
    if not isinstance(decoded, dict):
        raise PluginError(
            f"{call.label} printed output that is not a CNI result: {_quote(stdout)}{_stderr_note(stderr)}",
            plugin=call.plugin,
            command=call.command,
        )
    return decoded


def _failure(call: PluginCall, returncode: int, stdout: bytes, stderr: bytes) -> PluginError:
    status = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    try:
        error = json.loads(stdout)
    except (UnicodeDecodeError, json.JSONDecodeError):
        error = None
    if isinstance(error, dict) and ("msg" in error or "code" in error):
        code = error.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        msg = str(error.get("msg") or "")
        details = str(error.get("details") or "")
        text = msg or ERROR_CODES.get(code or 0, "no message")
        if details:
            text += f": {details}"
        hint = f"code {code}" if code is not None else "no code"
        if code in ERROR_CODES and msg:
            hint += f", {ERROR_CODES[code]}"
        return PluginError(
            f"{call.label} failed: {text} ({hint}, {status}){_stderr_note(stderr)}",
            plugin=call.plugin,
            command=call.command,
            code=code,
            details=details,
        )
    shown = f"; stdout: {_quote(stdout)}" if stdout.strip() else ""
    return PluginError(
        f"{call.label} failed with {status}{shown}{_stderr_note(stderr)}", plugin=call.plugin, command=call.command
    )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the plugin's process group and reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE)


def _quote(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + "..."
    return repr(text)


def _stderr_note(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()
    if not text:
        return ""
    if len(text) > MAX_SHOWN:
        text = "..." + text[-MAX_SHOWN:]
    return f"; stderr: {text}"
