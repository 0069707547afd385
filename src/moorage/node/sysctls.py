"""Pod sysctls: which namespace a sysctl lives in, and which a pod may set.

The kubelet classifies sysctls the same way (``net.*`` in the network namespace; ``kernel.shm*``, ``kernel.msg*``,
``kernel.sem``, ``fs.mqueue.*`` in the IPC one; the hostname and domain name in the UTS one); anything else is
the node's. :mod:`moorage.node.namespaces` sets them inside a pod's new namespaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from moorage.errors import InvalidArgument

Kind = Literal["net", "ipc", "uts"]


class InvalidSysctl(InvalidArgument):
    """A pod sysctl that is unknown, not namespaced, outside the pod's namespaces, or refused by the kernel."""


def sysctl_kind(name: str) -> Kind | None:
    """The namespace a sysctl (dotted or slashed form) lives in, or None if it is not namespaced."""
    dotted = ".".join(sysctl_parts(name))
    if dotted.startswith("net."):
        return "net"
    if dotted == "kernel.sem" or dotted.startswith(("kernel.shm", "kernel.msg", "fs.mqueue.")):
        return "ipc"
    if dotted in ("kernel.hostname", "kernel.domainname"):
        return "uts"
    return None


def check_sysctls(sysctls: Mapping[str, str], shared: Mapping[Kind, str]) -> None:
    """Refuse a pod's sysctl that is not namespaced, or lives in a namespace the pod shares with the node
    (``shared``: kind → why, e.g. "net" → "hostNetwork"): setting it would change the node. runc refuses these
    too ("not allowed in host network namespace"), and the kubelet classifies sysctls the same way
    (``net.*``; ``kernel.shm*``, ``kernel.msg*``, ``kernel.sem``, ``fs.mqueue.*``)."""
    for name in sysctls:
        kind = sysctl_kind(name)
        if kind is None:
            raise InvalidSysctl(
                f"sysctl {name}: not namespaced, refusing to set it for a pod (it would change the host)"
            )
        if kind in shared:
            raise InvalidSysctl(
                f"sysctl {name}: lives in the {kind} namespace, which this pod shares with the node ({shared[kind]}); "
                "setting it would change the node"
            )


def sysctl_parts(name: str) -> tuple[str, ...]:
    """Path components of a sysctl name: as sysctl(8), '/' separates if it comes before any '.', else '.' does
    and a '/' inside a component stands for a '.' (``net.ipv4.conf.eth0/100.rp_filter``)."""
    slash, dot = name.find("/"), name.find(".")
    parts = name.split("/") if slash != -1 and (dot == -1 or slash < dot) else name.replace("/", "\0").split(".")
    parts = [p.replace("\0", ".") for p in parts]
    if len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise InvalidSysctl(f"sysctl {name!r}: not a valid sysctl name")
    return tuple(parts)
