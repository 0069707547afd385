"""The node's CNI network: which file in ``conf_dir`` defines it, parsed and checked; where plugins live.

The network is the first file in lexical order among ``*.conflist``, ``*.conf`` and ``*.json`` (what containerd
and CRI-O pick, so an operator's ``10-bridge.conflist`` beats ``99-loopback.conf``). A file with a ``plugins``
list is a network configuration list; a ``.conf`` or ``.json`` without one is a single plugin's config and is
wrapped into a one-plugin list named after it, as libcni does.

Checked here, each failure a :class:`CniConfigError` naming the file: valid JSON object; ``name`` (letters,
digits, ``_.-``, as libcni requires, so it is safe in cache file names); a supported ``cniVersion`` (or, for
1.1, the highest supported of ``cniVersions``); a non-empty ``plugins`` list of objects each with a ``type``;
``disableCheck``/``disableGC`` booleans.

Example::

    network = load_network(Path("/etc/cni/net.d"))   # None: no config yet (NetworkReady=false)
    network.plugin_types                               # ("bridge", "portmap")
    find_plugin("bridge", [Path("/opt/cni/bin"), Path("/usr/lib/cni")])
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.errors import FailedPrecondition

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
MAX_CONFIG_BYTES = 1 << 20
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_PLUGIN_TYPE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class CniConfigError(FailedPrecondition):
    """The CNI network config file is unusable: the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class NetworkConfig:
    path: Path
    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    disable_check: bool
    disable_gc: bool

    @property
    def plugin_types(self) -> tuple[str, ...]:
        return tuple(str(p["type"]) for p in self.plugins)

    def as_list(self) -> dict[str, Any]:
        """The network as a configuration list JSON object (what the cache stores)."""
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "disableGC": self.disable_gc,
            "plugins": [dict(p) for p in self.plugins],
        }


POD_CIDR = "usePodCidr"
POD_CIDR_V6 = "usePodCidrIPv6"


def with_pod_cidrs(network: NetworkConfig, cidrs: Sequence[str]) -> NetworkConfig:
    """``network`` with every ``"usePodCidr"`` / ``"usePodCidrIPv6"`` string value (host-local's convention, as in
    ``"ranges": [[{"subnet": "usePodCidr"}]]``) replaced by the node's IPv4 / IPv6 pod CIDR from the kubelet's
    UpdateRuntimeConfig. Unchanged when the config uses neither; CniConfigError if it does and no such CIDR is
    known yet."""
    v4 = next((c for c in cidrs if ":" not in c), None)
    v6 = next((c for c in cidrs if ":" in c), None)

    def swap(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        if value in (POD_CIDR, POD_CIDR_V6):
            chosen = v4 if value == POD_CIDR else v6
            if chosen is None:
                family = "IPv4" if value == POD_CIDR else "IPv6"
                raise CniConfigError(
                    f"{network.path}: uses {value!r} but the kubelet has sent no {family} pod CIDR yet "
                    "(UpdateRuntimeConfig)"
                )
            return chosen
        return value

    plugins = tuple(swap(p) for p in network.plugins)
    return network if plugins == network.plugins else dataclasses.replace(network, plugins=plugins)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.4.0"`` -> ``(0, 4, 0)``; anything unparsable sorts lowest."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def config_files(conf_dir: Path) -> list[Path]:
    """The candidate config files in ``conf_dir``, in the lexical order that picks the network."""
    try:
        entries = list(os.scandir(conf_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise CniConfigError(f"{conf_dir}: cannot list the CNI config directory: {exc.strerror}") from exc
    names = sorted(e.name for e in entries if e.name.endswith(CONFIG_SUFFIXES) and e.is_file())
    return [conf_dir / name for name in names]


def load_network(conf_dir: Path) -> NetworkConfig | None:
    """The network defined by the first config file in ``conf_dir``; None when there is none (or no dir)."""
    for _ in range(3):
        files = config_files(conf_dir)
        if not files:
            return None
        path = files[0]
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            continue  # removed or renamed between listing and reading: look again
        except OSError as exc:
            raise CniConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        if len(data) > MAX_CONFIG_BYTES:
            raise CniConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        return parse_network(path, data)
    raise CniConfigError(f"{conf_dir}: CNI config files keep disappearing while being read")


def parse_network(path: Path, data: bytes) -> NetworkConfig:
    """Parse and check one config file's bytes; ``path`` names it in errors and decides .conflist vs .conf."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CniConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CniConfigError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if "plugins" in doc:
        raw_plugins = doc["plugins"]
        if not isinstance(raw_plugins, list) or not raw_plugins:
            raise CniConfigError(f"{path}: plugins must be a non-empty list of plugin configs")
    elif path.suffix == ".conflist":
        raise CniConfigError(f"{path}: a .conflist needs a plugins list")
    else:
        raw_plugins = [doc]
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CniConfigError(f"{path}: no network name (name)")
    if not _NAME.match(name):
        raise CniConfigError(f"{path}: network name {name!r} may only hold letters, digits, '_', '.' and '-'")
    version = _version(path, doc)
    plugins: list[Mapping[str, Any]] = []
    for index, plugin in enumerate(raw_plugins):
        plugins.append(_plugin(path, index, plugin))
    return NetworkConfig(
        path=path,
        name=name,
        cni_version=version,
        plugins=tuple(plugins),
        disable_check=_flag(path, doc, "disableCheck"),
        disable_gc=_flag(path, doc, "disableGC"),
    )


def find_plugin(plugin_type: str, bin_dirs: Sequence[Path]) -> Path | None:
    """The first executable file named ``plugin_type`` in ``bin_dirs``."""
    if not _PLUGIN_TYPE.match(plugin_type):
        return None
    for directory in bin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _version(path: Path, doc: Mapping[str, Any]) -> str:
    versions = doc.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise CniConfigError(f"{path}: cniVersions must be a list of version strings")
        usable: list[str] = [v for v in versions if v in SUPPORTED_VERSIONS]
        if usable:
            return max(usable, key=version_tuple)
        if doc.get("cniVersion") in (None, ""):
            raise CniConfigError(
                f"{path}: none of cniVersions {versions} is supported (supported: {', '.join(SUPPORTED_VERSIONS)})"
            )
    version = doc.get("cniVersion")
    if version is None or version == "":
        raise CniConfigError(f"{path}: no cniVersion")
    if not isinstance(version, str):
        raise CniConfigError(f"{path}: cniVersion must be a string, got {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CniConfigError(
            f"{path}: cniVersion {version} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    return version


def _plugin(path: Path, index: int, plugin: Any) -> Mapping[str, Any]:
    where = f"plugins[{index}]"
    if not isinstance(plugin, dict):
        raise CniConfigError(f"{path}: {where} must be a JSON object")
    plugin_type = plugin.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CniConfigError(f"{path}: {where} has no plugin type (type)")
    if not _PLUGIN_TYPE.match(plugin_type):
        raise CniConfigError(f"{path}: {where} type {plugin_type!r} is not a plugin binary name")
    capabilities = plugin.get("capabilities")
    if capabilities is not None and not (
        isinstance(capabilities, dict) and all(isinstance(v, bool) for v in capabilities.values())
    ):
        raise CniConfigError(f"{path}: {where} ({plugin_type}) capabilities must map names to true/false")
    return plugin


def _flag(path: Path, doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CniConfigError(f"{path}: {key} must be true or false, got {value!r}")
