"""On-disk record of each CNI attachment, so DEL and CHECK get exactly what ADD used and returned.

One JSON file per attachment, keyed as the spec keys plugin state, by ``(network name, container id, ifname)``::

    <cache_dir>/<network>/<container id>@<ifname>.json
    {"version": 1, "network": "podnet", "containerId": "...", "ifname": "eth0", "netns": "/run/.../net",
     "configPath": "/etc/cni/net.d/10-podnet.conflist", "config": {<the network as a conflist>},
     "capabilityArgs": {"portMappings": [...], ...}, "cniArgs": [["IgnoreUnknown", "1"], ...],
     "result": {<the final ADD result>} | null}

The entry is written before the first plugin's ADD (``result`` null) and again with the result once the chain
succeeded, so a daemon that dies mid-ADD still finds on restart what to DEL and with which config, even if the
config file changed since. It is removed only after a successful DEL. Writes are atomic (temp file, fsync,
rename, fsync of the directory), so an entry is always whole. Container ids cannot hold ``@``, so the file name
is unambiguous; the key fields are also stored inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from moorage.durable import fsync_dir
from moorage.errors import MoorageError
from moorage.node.cni.attachment import AttachmentKey
from moorage.node.cni.config import CniConfigError, NetworkConfig, parse_network

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1


class CacheError(MoorageError):
    """The attachment cache could not be written or removed (INTERNAL): the message names the file."""


@dataclass(frozen=True)
class CacheEntry:
    network: str
    key: AttachmentKey
    netns: str
    config_path: str
    config: Mapping[str, Any]  # the network as a configuration list (NetworkConfig.as_list())
    capability_args: Mapping[str, Any] = field(default_factory=dict)
    cni_args: tuple[tuple[str, str], ...] = ()
    result: Mapping[str, Any] | None = None

    def network_config(self) -> NetworkConfig:
        """The cached network config, checked again (raises :class:`CniConfigError` for a damaged entry)."""
        return parse_network(Path(self.config_path or f"{self.network}.conflist"), json.dumps(self.config).encode())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "network": self.network,
            "containerId": self.key.container_id,
            "ifname": self.key.ifname,
            "netns": self.netns,
            "configPath": self.config_path,
            "config": dict(self.config),
            "capabilityArgs": dict(self.capability_args),
            "cniArgs": [list(pair) for pair in self.cni_args],
            "result": dict(self.result) if self.result is not None else None,
        }

    @classmethod
    def from_json(cls, doc: Any) -> CacheEntry:
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise ValueError("not a version 1 attachment record")
        result = doc.get("result")
        if result is not None and not isinstance(result, dict):
            raise ValueError("result is not an object")
        return cls(
            network=str(doc["network"]),
            key=AttachmentKey(str(doc["containerId"]), str(doc["ifname"])),
            netns=str(doc.get("netns") or ""),
            config_path=str(doc.get("configPath") or ""),
            config=dict(doc["config"]),
            capability_args=dict(doc.get("capabilityArgs") or {}),
            cni_args=tuple((str(k), str(v)) for k, v in doc.get("cniArgs") or ()),
            result=result,
        )


class AttachmentCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, network: str, key: AttachmentKey) -> Path:
        return self.root / network / f"{key.container_id}@{key.ifname}.json"

    def write(self, entry: CacheEntry) -> None:
        """Atomically (re)write ``entry``."""
        path = self.path(entry.network, entry.key)
        data = json.dumps(entry.to_json(), indent=1, sort_keys=True).encode()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            fsync_dir(path.parent)
        except OSError as exc:
            raise CacheError(f"write CNI attachment cache {path}: {exc.strerror or exc}") from exc

    def load(self, network: str, key: AttachmentKey) -> CacheEntry | None:
        return self._read(self.path(network, key))

    def find(self, key: AttachmentKey) -> list[CacheEntry]:
        """The entries of ``key`` in every network (normally one)."""
        name = f"{key.container_id}@{key.ifname}.json"
        found = []
        for directory in self._network_dirs():
            entry = self._read(directory / name)
            if entry is not None:
                found.append(entry)
        return found

    def entries(self) -> list[CacheEntry]:
        """Every readable entry; unreadable files are logged and skipped."""
        found = []
        for directory in self._network_dirs():
            for path in sorted(directory.glob("*.json")):
                if path.name.startswith(".tmp-"):
                    continue
                entry = self._read(path)
                if entry is not None:
                    found.append(entry)
        return found

    def remove(self, network: str, key: AttachmentKey) -> None:
        path = self.path(network, key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CacheError(f"remove CNI attachment cache {path}: {exc.strerror}") from exc
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)

    def _network_dirs(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CacheError(f"list CNI attachment cache {self.root}: {exc.strerror}") from exc

    def _read(self, path: Path) -> CacheEntry | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cni cache entry unreadable", path=str(path), error=exc.strerror)
            return None
        try:
            entry = CacheEntry.from_json(json.loads(data))
            entry.network_config()
        except (ValueError, KeyError, TypeError, CniConfigError) as exc:
            log.warning("cni cache entry damaged; ignoring it", path=str(path), error=str(exc))
            return None
        return entry
