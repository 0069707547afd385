"""Moorage's configuration: one frozen dataclass per TOML table, each key with its default and its doc.

The declarations below are the single source of truth: :func:`load` validates a file against them,
:func:`render_toml` prints the commented default config (``moorage config default``) and
:func:`render_markdown` the README's reference table. Every key has a default, so no file is needed.

An unknown key, a value of the wrong type or a bad value raises one :class:`ConfigError` naming the file and
the dotted key, and the daemon does not start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.defaults import DEFAULT_CONFIG_PATH
from moorage.errors import ConfigError

Check = Callable[[Any], str | None]
"""A value check: returns what is wrong with the value, or None when it is fine."""


def key(default: Any, doc: str, check: Check | None = None) -> Any:
    """Declare a config key: its default, its one-paragraph doc and an optional value check."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: _copy(default), metadata={"doc": doc, "check": check})
    return field(default=default, metadata={"doc": doc, "check": check})


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return types.MappingProxyType({k: _copy(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(value)
    return value


# --- value checks --------------------------------------------------------------------------------------------


def absolute_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"must be an absolute path, got {value!r}"
    if "\0" in value:
        return "must not contain a NUL byte"
    return None


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"

    return check


def listen_address(*, optional: bool) -> Check:
    """``host:port`` with an IP address (or ``localhost``) and a port 0-65535; ``""`` when optional."""

    def check(value: str) -> str | None:
        if value == "" and optional:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            return f"must be host:port with a port from 0 to 65535, got {value!r}"
        host = host.removeprefix("[").removesuffix("]")
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return f"host must be an IP address or localhost, got {host!r}"
        return None

    return check


def non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def dns_label(value: str) -> str | None:
    """RuntimeClass handler names are DNS-1123 labels."""
    if DNS_LABEL.fullmatch(value):
        return None
    return f"must be a DNS-1123 label (lower-case letters, digits and '-', at most 63), got {value!r}"


def at_least(minimum: int) -> Check:
    def check(value: int) -> str | None:
        return None if value >= minimum else f"must be at least {minimum}, got {value}"

    return check


def absolute_paths(values: tuple[str, ...]) -> str | None:
    return next((problem for v in values if (problem := absolute_path(v))), None)


# --- the declarations ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogSection:
    level: str = key(
        "info",
        "Least severe level logged: debug, info, warning or error.",
        one_of("debug", "info", "warning", "error"),
    )
    format: str = key(
        "text",
        "text (key=value lines, for people and journald) or json (one object a line).",
        one_of("text", "json"),
    )


@dataclass(frozen=True)
class HandlerSection:
    path: str = key("runc", "The OCI runtime binary: an absolute path, or a name looked up in PATH.", non_empty)


@dataclass(frozen=True)
class RuntimeSection:
    default_handler: str = key(
        "runc",
        "Handler used when a pod names none (no RuntimeClass). Must be a key of runtime.handlers.",
        dns_label,
    )
    handlers: Mapping[str, HandlerSection] = key(
        {"runc": HandlerSection(path="runc"), "crun": HandlerSection(path="crun")},
        "OCI runtimes by RuntimeClass handler name. A table given in the file replaces this default table as a whole.",
    )
    conmon: str = key(
        "conmon", "The conmon container monitor: an absolute path, or a name looked up in PATH.", non_empty
    )
    pause_binary: str = key(
        "",
        "The pause program the local sandbox image is built from; empty: the one `make pause` builds in a checkout "
        "(build/pause/pause), else the virtualenv's libexec/pause (/usr/lib/moorage/libexec/pause from the Debian "
        "package).",
    )
    disk_usage_period: int = key(
        10,
        "Seconds between walks of every container's writable layer for its disk usage (ContainerStats' "
        "writable_layer, which the kubelet's eviction reads): the stats RPCs answer from the last walk, as "
        "containerd's stats_collect_period. A new container is walked when first asked for.",
        at_least(1),
    )
    seccomp_profile_root: str = key(
        "/var/lib/kubelet/seccomp",
        "Where Localhost seccomp profiles named by pods are found (the kubelet's <root-dir>/seccomp).",
        absolute_path,
    )
    cdi_spec_dirs: tuple[str, ...] = key(
        ["/etc/cdi", "/var/run/cdi"],
        "Directories of Container Device Interface spec files (JSON or YAML), read when a container asks for a CDI "
        "device (ContainerConfig.CDI_devices or a cdi.k8s.io/ annotation); a later directory wins over an earlier "
        "one, as the CDI specification orders /etc/cdi and /var/run/cdi.",
        absolute_paths,
    )


@dataclass(frozen=True)
class ImageSection:
    auth_files: tuple[str, ...] = key(
        ["/run/containers/0/auth.json", "/etc/containers/auth.json", "/root/.docker/config.json"],
        "Registry credential files in the docker config.json / containers-auth.json format, searched in order "
        "when a pull request carries no credentials of its own.",
        absolute_paths,
    )
    max_concurrent_downloads: int = key(3, "Layers downloaded at once per pull.", at_least(1))
    pull_progress_timeout: int = key(
        300,
        "Seconds a pull may go without receiving a byte before it is cancelled with an error; 0 never cancels.",
        at_least(0),
    )
    pull_retries: int = key(
        4, "Attempts per registry request after a 429, a 5xx or a dropped connection, with backoff.", at_least(1)
    )
    certs_dirs: tuple[str, ...] = key(
        ["/etc/containers/certs.d", "/etc/docker/certs.d"],
        "containers-certs.d(5) directories searched, in order, for a registry's <host[:port]>/ directory: *.crt "
        "CAs it is trusted with, client.cert + client.key for mutual TLS. The first directory that has the host "
        "decides (as CRI-O and podman read both of these).",
        absolute_paths,
    )
    max_layer_size: int = key(
        32 << 30,
        "Bytes one layer may unpack to (its uncompressed tar stream); past it the pull fails and the half-made "
        "layer is removed: a small compressed layer can expand to fill the disk (a layer bomb). 32 GiB is about "
        "three times the largest single layers of common images.",
        at_least(1),
    )


@dataclass(frozen=True)
class CniSection:
    conf_dir: str = key(
        "/etc/cni/net.d",
        "Directory of CNI network configs; the first file in lexical order is used.",
        absolute_path,
    )
    bin_dirs: tuple[str, ...] = key(
        ["/opt/cni/bin", "/usr/lib/cni"], "Directories searched, in order, for CNI plugin binaries.", absolute_paths
    )
    plugin_timeout: int = key(
        60, "Seconds one CNI plugin call may take before it is killed and the pod's set-up fails.", at_least(1)
    )


@dataclass(frozen=True)
class StreamingSection:
    address: str = key(
        "127.0.0.1:0",
        "host:port of the exec/attach/port-forward server; port 0 picks a free port.",
        listen_address(optional=False),
    )
    idle_timeout: int = key(
        14400,
        "Seconds an exec/attach/port-forward connection may pass without a frame either way before it is closed "
        "(and its command killed), as the kubelet's streamingConnectionIdleTimeout; 0 never closes it.",
        at_least(0),
    )


@dataclass(frozen=True)
class MetricsSection:
    address: str = key(
        "",
        "host:port of the Prometheus /metrics endpoint; empty turns it off.",
        listen_address(optional=True),
    )


@dataclass(frozen=True)
class Config:
    root: str = key("/var/lib/moorage", "Persistent state: the metadata store, images, snapshots.", absolute_path)
    state: str = key(
        "/run/moorage", "Runtime state that a reboot clears: pinned namespaces, conmon files.", absolute_path
    )
    socket: str = key(
        "/run/moorage/moorage.sock",
        "The CRI unix socket the kubelet and crictl connect to (mode 0660).",
        absolute_path,
    )
    cgroup_driver: str = key(
        "cgroupfs",
        "cgroupfs or systemd; must match the kubelet's cgroupDriver (the RuntimeConfig RPC reports it).",
        one_of("cgroupfs", "systemd"),
    )
    sandbox_image: str = key(
        "localhost/moorage/pause:1.0",
        "Image of the pause (infra) container, used only by pods that share one PID namespace. The default is "
        "moorage's own, built on the node from runtime.pause_binary, so no registry is needed; any other name "
        "(e.g. registry.k8s.io/pause:3.10) is pulled when first needed. Reported pinned.",
        non_empty,
    )
    registries_conf: str = key(
        "/etc/containers/registries.conf",
        "containers-registries.conf(5) v2 file: mirrors, insecure and blocked registries, short names.",
        absolute_path,
    )
    short_name_aliases: str = key(
        "/var/cache/containers/short-name-aliases.conf",
        "Short-name aliases ([aliases] only) laid over registries.conf's and its drop-ins', as podman records them; "
        "a missing file is no aliases.",
        absolute_path,
    )
    log: LogSection = field(default_factory=LogSection)
    image: ImageSection = field(default_factory=ImageSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    cni: CniSection = field(default_factory=CniSection)
    streaming: StreamingSection = field(default_factory=StreamingSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists, for verbose Status info and logs."""
        return _plain(self)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# --- loading ---------------------------------------------------------------------------------------------------


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (None: the default path if it exists, else all defaults) and apply ``overrides``.

    ``overrides`` maps dotted keys (``"root"``, ``"log.level"``) to values, as command-line flags give them;
    they are checked like the file's values and name the flag's key in errors.
    """
    source = str(path) if path is not None else DEFAULT_CONFIG_PATH
    table: dict[str, Any] = {}
    if path is not None or Path(DEFAULT_CONFIG_PATH).exists():
        try:
            with open(source, "rb") as fh:
                table = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    config: Config = _build(Config, table, prefix="", source=source)
    if overrides:
        config = with_values(config, overrides, source="command line")
    _check_whole(config, source)
    return config


def with_values(config: Config, values: Mapping[str, Any], source: str) -> Config:
    """A copy of ``config`` with the dotted keys in ``values`` set, checked as a file's values are."""
    table = _plain(config)
    for dotted, value in values.items():
        *parents, last = dotted.split(".")
        node = table
        for part in parents:
            node = node[part]
        node[last] = list(value) if isinstance(value, tuple) else value
    return _build(Config, table, prefix="", source=source)  # type: ignore[no-any-return]


def _check_whole(config: Config, source: str) -> None:
    """Rules that tie several keys together."""
    if config.runtime.default_handler not in config.runtime.handlers:
        known = ", ".join(sorted(config.runtime.handlers)) or "none"
        raise ConfigError(
            f"{source}: runtime.default_handler: {config.runtime.default_handler!r} is not a key of "
            f"runtime.handlers (defined: {known})"
        )


def _build(cls: type[Any], table: Mapping[str, Any], *, prefix: str, source: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.')}: expected a table, got {_kind(table)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in table:
        if name not in fields:
            known = ", ".join(f"{prefix}{n}" for n in fields)
            raise ConfigError(f"{source}: {prefix}{name}: unknown key (known here: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            continue
        dotted = f"{prefix}{name}"
        values[name] = _convert(hints[name], table[name], dotted=dotted, source=source)
        check: Check | None = f.metadata.get("check")
        problem = check(values[name]) if check else None
        if problem:
            raise ConfigError(f"{source}: {dotted}: {problem}")
    return cls(**values)


def _convert(hint: Any, value: Any, *, dotted: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{dotted}.", source=source)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {dotted}: expected a list of strings, got {_kind(value)}")
        return tuple(value)
    if origin is Mapping:
        _, item = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {dotted}: expected a table, got {_kind(value)}")
        out = {}
        for name, sub in value.items():
            problem = dns_label(name)
            if problem:
                raise ConfigError(f"{source}: {dotted}.{name}: name {problem}")
            out[name] = _convert(item, sub, dotted=f"{dotted}.{name}", source=source)
        return types.MappingProxyType(out)
    if hint is bool or hint is int or hint is str:
        if type(value) is not hint:
            raise ConfigError(f"{source}: {dotted}: expected {_TYPE_NAMES[hint]}, got {_kind(value)}")
        return value
    raise TypeError(f"config key {dotted} has an unsupported type {hint!r}")  # a bug in the declarations


_TYPE_NAMES = {bool: "a boolean", int: "an integer", str: "a string"}


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return f"a list {value!r}"
    return f"{type(value).__name__} {value!r}"


# --- rendering ---------------------------------------------------------------------------------------------------


def iter_keys(config: Any = None, prefix: str = "") -> typing.Iterator[tuple[str, Any, str]]:
    """Every leaf key of ``config`` (default: the defaults) as (dotted name, value, doc), in declaration order."""
    obj = Config() if config is None else config
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f.metadata["doc"]


def render_toml() -> str:
    """The complete default config, commented, as ``moorage config default`` prints it."""
    lines = [
        "# Moorage configuration. Every key is shown with its default; delete what you do not change.",
        "",
    ]
    _render_table(Config(), "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _render_table(obj: Any, name: str, lines: list[str]) -> None:
    if name:
        lines.append(f"[{name}]")
    subtables: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        dotted = f"{name}.{f.name}" if name else f.name
        if dataclasses.is_dataclass(value):
            subtables.append((dotted, value))
            continue
        lines.append(f"# {f.metadata['doc']}")
        if isinstance(value, Mapping):
            subtables.extend((f"{dotted}.{k}", v) for k, v in value.items())
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    lines.append("")
    for dotted, value in subtables:
        _render_table(value, dotted, lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r}")


def render_markdown() -> str:
    """The README's configuration reference table."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for dotted, default, doc in iter_keys():
        if isinstance(default, Mapping):
            shown = ", ".join(f"{k} → {_plain(v)['path']}" for k, v in default.items())
        else:
            shown = _toml_value(default)
        rows.append(f"| `{dotted}` | `{shown}` | {doc} |")
    return "\n".join(rows) + "\n"
