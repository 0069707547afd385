"""CNI plugin results of every spec version moorage speaks, normalized into one typed form (pure: no I/O).

What changed between the versions a result can come in:

    0.1.0/0.2.0  {"ip4": {"ip", "gateway", "routes"}, "ip6": {...}, "dns"}      (legacy, read for robustness)
    0.3.0-0.4.0  {"interfaces", "ips": [{"version": "4"|"6", "address", "gateway", "interface"}], "routes", "dns"}
    1.0.0        as 0.4.0 without ips[].version
    1.1.0        adds interfaces[].mtu/socketPath/pciID and routes[].mtu/advmss/priority/table/scope

``ips[].interface`` is an index into ``interfaces``; an IP whose interface has a ``sandbox`` lives in the pod.
:meth:`Result.pod_ips` picks the pod's addresses the way containerd does: those on the pod interface (else
every sandboxed or unattached one), the first IPv4 address first (the pod's primary IP), the rest in order.

Example::

    result = parse_result(json.loads(stdout), plugin="bridge")
    result.pod_ips("eth0")    # ("10.88.0.5", "fd00:88::5")
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moorage.errors import MoorageError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidResult(MoorageError):
    """A plugin printed a result that is not a valid CNI result (INTERNAL): the message names the plugin."""


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""  # the netns path (or hypervisor id) for pod interfaces; empty for host interfaces
    mtu: int | None = None
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True)
class IPConfig:
    address: IPInterface  # address with prefix, e.g. 10.88.0.5/24
    gateway: IPAddress | None = None
    interface: int | None = None  # index into Result.interfaces

    @property
    def version(self) -> int:
        return self.address.version

    @property
    def ip(self) -> str:
        return str(self.address.ip)


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def interface_of(self, ip: IPConfig) -> Interface | None:
        index = ip.interface
        if index is None or not 0 <= index < len(self.interfaces):
            return None
        return self.interfaces[index]

    def pod_ips(self, ifname: str = "eth0") -> tuple[str, ...]:
        """The pod's addresses, primary first: see the module docstring."""
        on_pod_if = [
            ip for ip in self.ips if (i := self.interface_of(ip)) is not None and i.name == ifname and i.sandbox
        ]
        chosen = on_pod_if or [ip for ip in self.ips if (i := self.interface_of(ip)) is None or i.sandbox]
        first_v4 = next((ip for ip in chosen if ip.version == 4), None)
        ordered = ([first_v4] if first_v4 else []) + [ip for ip in chosen if ip is not first_v4]
        seen: dict[str, None] = {}
        for ip in ordered:
            seen.setdefault(ip.ip, None)
        return tuple(seen)


def parse_result(data: Any, *, plugin: str = "plugin") -> Result:
    """Normalize a decoded JSON result; raise :class:`InvalidResult` naming ``plugin`` if it is malformed."""
    try:
        return _parse(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidResult(f"CNI plugin {plugin} returned an invalid result: {exc}") from exc


def _parse(data: Any) -> Result:
    obj = _object(data, "result")
    version = obj.get("cniVersion", "")
    if not isinstance(version, str):
        raise ValueError(f"cniVersion must be a string, got {version!r}")
    if "ip4" in obj or "ip6" in obj:
        return _parse_legacy(obj, version)
    interfaces = tuple(_interface(i, n) for n, i in enumerate(_list(obj, "interfaces")))
    ips = tuple(_ip(i, n, len(interfaces)) for n, i in enumerate(_list(obj, "ips")))
    routes = tuple(_route(r, f"routes[{n}]") for n, r in enumerate(_list(obj, "routes")))
    return Result(version, interfaces, ips, routes, _dns(obj.get("dns")))


def _parse_legacy(obj: Mapping[str, Any], version: str) -> Result:
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for key in ("ip4", "ip6"):
        if obj.get(key) is None:
            continue
        section = _object(obj[key], key)
        ips.append(IPConfig(_interface_address(section.get("ip"), f"{key}.ip"), _gateway(section, key)))
        routes.extend(_route(r, f"{key}.routes[{n}]") for n, r in enumerate(_list(section, "routes")))
    return Result(version, (), tuple(ips), tuple(routes), _dns(obj.get("dns")))


def _interface(data: Any, n: int) -> Interface:
    where = f"interfaces[{n}]"
    obj = _object(data, where)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string")
    return Interface(
        name=name,
        mac=_str(obj, "mac", where),
        sandbox=_str(obj, "sandbox", where),
        mtu=_int(obj, "mtu", where),
        socket_path=_str(obj, "socketPath", where),
        pci_id=_str(obj, "pciID", where),
    )


def _ip(data: Any, n: int, n_interfaces: int) -> IPConfig:
    where = f"ips[{n}]"
    obj = _object(data, where)
    address = _interface_address(obj.get("address"), f"{where}.address")
    declared = obj.get("version")
    if declared is not None and str(declared) not in ("4", "6"):
        raise ValueError(f"{where}.version must be '4' or '6', got {declared!r}")
    index = _int(obj, "interface", where)
    if index is not None and not 0 <= index < n_interfaces:
        raise ValueError(f"{where}.interface {index} is not an index into the {n_interfaces} interfaces")
    return IPConfig(address, _gateway(obj, where), index)


def _route(data: Any, where: str) -> Route:
    obj = _object(data, where)
    dst = obj.get("dst")
    if not isinstance(dst, str):
        raise ValueError(f"{where}.dst must be a CIDR string, got {dst!r}")
    try:
        network = ipaddress.ip_network(dst, strict=False)
    except ValueError as exc:
        raise ValueError(f"{where}.dst: {exc}") from None
    gw = obj.get("gw")
    return Route(
        dst=network,
        gw=_address(gw, f"{where}.gw") if gw else None,
        mtu=_int(obj, "mtu", where),
        advmss=_int(obj, "advmss", where),
        priority=_int(obj, "priority", where),
        table=_int(obj, "table", where),
        scope=_int(obj, "scope", where),
    )


def _dns(data: Any) -> DNS:
    if data is None:
        return DNS()
    obj = _object(data, "dns")
    return DNS(
        nameservers=_strings(obj, "nameservers"),
        domain=_str(obj, "domain", "dns"),
        search=_strings(obj, "search"),
        options=_strings(obj, "options"),
    )


def _interface_address(value: Any, where: str) -> IPInterface:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"{where} must be an address in CIDR form, got {value!r}")
    try:
        return ipaddress.ip_interface(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _gateway(obj: Mapping[str, Any], where: str) -> IPAddress | None:
    gw = obj.get("gateway")
    return _address(gw, f"{where}.gateway") if gw else None


def _address(value: Any, where: str) -> IPAddress:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be an IP address string, got {value!r}")
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}.{key} must be an integer, got {value!r}")
    return value


def _strings(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = _list(obj, key)
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"dns.{key} must be a list of strings")
    return tuple(value)
