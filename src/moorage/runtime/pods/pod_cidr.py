"""The pod CIDR the kubelet hands over with UpdateRuntimeConfig, kept across restarts."""

from __future__ import annotations

import ipaddress

from moorage.errors import InvalidArgument
from moorage.store.db import Store

SETTING = "pod_cidr"


def parse(text: str) -> tuple[str, ...]:
    """``"10.244.1.0/24"`` or a dual-stack ``"10.244.1.0/24,fd00:1::/64"``; normalized, host bits refused."""
    cidrs = []
    for raw in text.split(","):
        part = raw.strip()
        try:
            cidrs.append(str(ipaddress.ip_network(part, strict=True)))
        except ValueError as exc:
            raise InvalidArgument(f"runtime_config.network_config.pod_cidr: {part!r} is not a CIDR: {exc}") from exc
    if len({ipaddress.ip_network(c).version for c in cidrs}) != len(cidrs):
        raise InvalidArgument(f"runtime_config.network_config.pod_cidr: {text!r}: at most one IPv4 and one IPv6 range")
    return tuple(cidrs)


class PodCidr:
    """The current pod CIDR: persisted first, then published."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.value: tuple[str, ...] = ()

    async def load(self) -> None:
        self.value = tuple(await self._store.get_setting(SETTING, []))

    async def update(self, text: str) -> bool:
        """Store a new pod CIDR; an empty one is ignored as the kubelet means "no change". Returns if changed."""
        if not text.strip():
            return False
        cidrs = parse(text)
        if cidrs == self.value:
            return False
        await self._store.set_setting(SETTING, list(cidrs))
        self.value = cidrs
        return True
