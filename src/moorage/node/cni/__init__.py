"""CNI client: pod networking through the node's CNI network config and plugins (CNI spec 0.3.0-1.1.0).

config.py      which file in conf_dir is the network; parse and check it; find plugin binaries
attachment.py  what the runtime asks for one pod (Attachment) and gets back (AttachResult)
invoke.py      exec one plugin: env, stdin, timeout, result or error object -> PluginError
result.py      results of every version -> one typed Result; the pod's IPs
chain.py       a verb through the plugin list: ADD with chaining, DEL in reverse, CHECK, STATUS, GC
cache.py       the on-disk record of each attachment (config, args and ADD result) for DEL and CHECK
manager.py     Cni: setup / teardown / check / status / gc / config change detection
"""

from moorage.node.cni.attachment import (
    Attachment,
    AttachmentKey,
    AttachResult,
    Bandwidth,
    DnsConfig,
    PortMapping,
)
from moorage.node.cni.cache import CacheError
from moorage.node.cni.config import CniConfigError, NetworkConfig, find_plugin, load_network
from moorage.node.cni.invoke import PluginError, PluginNotFound, PluginTimeout
from moorage.node.cni.manager import Cni, NetworkNotReady
from moorage.node.cni.result import DNS, Interface, InvalidResult, IPConfig, Result, Route, parse_result

__all__ = [
    "DNS",
    "AttachResult",
    "Attachment",
    "AttachmentKey",
    "Bandwidth",
    "CacheError",
    "Cni",
    "CniConfigError",
    "DnsConfig",
    "IPConfig",
    "Interface",
    "InvalidResult",
    "NetworkConfig",
    "NetworkNotReady",
    "PluginError",
    "PluginNotFound",
    "PluginTimeout",
    "PortMapping",
    "Result",
    "Route",
    "find_plugin",
    "load_network",
    "parse_result",
]
