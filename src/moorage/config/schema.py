"""The declarations: one frozen dataclass per TOML table, each key with its default, its doc and its check."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moorage.config.checks import (
    Check,
    absolute_path,
    absolute_paths,
    at_least,
    dns_label,
    listen_address,
    non_empty,
    one_of,
)


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
        return plain(self)  # type: ignore[no-any-return]


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value
