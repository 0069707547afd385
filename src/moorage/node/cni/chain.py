"""Running a verb through a network's plugin list: ADD forward with chaining, DEL backward, CHECK forward.

A :class:`Chain` is one network config plus everything fixed for one attachment (container id, netns, ifname,
CNI_ARGS, the capability values), so ADD, its rollback, and a DEL after a daemon restart (rebuilt from the
cache) send plugins the same input. Plugin binaries are looked up per call, in ``bin_dirs`` order.

Spec rules applied here:

- ADD: each plugin gets the previous plugin's result as ``prevResult``; the last one's result is the network's.
- DEL: plugins in reverse order; every plugin is tried even after one failed (so IPAM leases are released
  whatever a later plugin does), and the first failure is raised afterwards. ``prevResult`` (the cached ADD
  result) only from spec 0.4.0 on, as 0.3.x plugins do not expect it. An empty ``netns`` is passed as is
  (the spec's "namespace already gone").
- CHECK: only from 0.4.0 and unless ``disableCheck``; always with ``prevResult``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.errors import MoorageError
from moorage.node.cni.attachment import AttachmentKey, format_cni_args, runtime_config_for
from moorage.node.cni.config import NetworkConfig, at_least, find_plugin
from moorage.node.cni.invoke import PluginCall, PluginError, PluginNotFound, cni_env, exec_plugin, plugin_stdin


@dataclass(frozen=True)
class Chain:
    network: NetworkConfig
    bin_dirs: tuple[Path, ...]
    timeout: float
    key: AttachmentKey
    netns: str = ""
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def plugin_path(self, plugin_type: str) -> Path:
        path = find_plugin(plugin_type, self.bin_dirs)
        if path is None:
            raise PluginNotFound(
                f'CNI plugin {plugin_type} (network "{self.network.name}", {self.network.path}) not found in '
                + ", ".join(str(d) for d in self.bin_dirs)
            )
        return path

    def require_plugins(self) -> None:
        """Raise :class:`PluginNotFound` naming every plugin of the network that is not installed."""
        missing = [t for t in self.network.plugin_types if find_plugin(t, self.bin_dirs) is None]
        if missing:
            raise PluginNotFound(
                f"CNI plugin{'s' if len(missing) > 1 else ''} {', '.join(missing)} of network "
                f'"{self.network.name}" ({self.network.path}) not found in ' + ", ".join(str(d) for d in self.bin_dirs)
            )

    async def call(
        self, index: int, command: str, prev_result: Mapping[str, Any] | None = None, netns: str | None = None
    ) -> Any:
        """Run plugin ``index`` of the list with ``command`` for this attachment."""
        plugin = self.network.plugins[index]
        plugin_type = str(plugin["type"])
        stdin = plugin_stdin(
            self.network.name,
            self.network.cni_version,
            plugin,
            runtime_config=runtime_config_for(plugin, self.capability_args),
            prev_result=prev_result,
        )
        env = cni_env(
            command,
            self.bin_dirs,
            container_id=self.key.container_id,
            netns=self.netns if netns is None else netns,
            ifname=self.key.ifname,
            args=format_cni_args(list(self.cni_args)),
        )
        call = PluginCall(plugin_type, self.plugin_path(plugin_type), command, stdin, env, self.network.name)
        return await exec_plugin(call, self.timeout)

    async def add(self, progress: list[Mapping[str, Any]]) -> Mapping[str, Any]:
        """ADD through the whole list; each plugin's result is appended to ``progress`` as it comes (so a
        caller rolling back knows how far it got). Returns the final result."""
        prev: Mapping[str, Any] | None = None
        for index in range(len(self.network.plugins)):
            prev = await self.call(index, "ADD", prev)
            progress.append(prev)
        assert prev is not None
        return prev

    async def delete(
        self, prev_result: Mapping[str, Any] | None, *, netns: str | None = None, upto: int | None = None
    ) -> None:
        """DEL plugins ``upto`` (inclusive; default the last) down to the first; raise the first failure."""
        last = len(self.network.plugins) - 1 if upto is None else upto
        prev = prev_result if at_least(self.network.cni_version, "0.4.0") else None
        errors: list[MoorageError] = []
        for index in range(last, -1, -1):
            try:
                await self.call(index, "DEL", prev, netns)
            except MoorageError as exc:
                errors.append(exc)
        raise_first(errors)

    async def check(self, prev_result: Mapping[str, Any]) -> None:
        if not at_least(self.network.cni_version, "0.4.0") or self.network.disable_check:
            return
        for index in range(len(self.network.plugins)):
            await self.call(index, "CHECK", prev_result)

    async def status(self) -> None:
        """STATUS each plugin (1.1.0 configs; older ones have no STATUS verb)."""
        if not at_least(self.network.cni_version, "1.1.0"):
            return
        for plugin in self.network.plugins:
            await self._verb(plugin, "STATUS", {})

    async def gc(self, valid: Sequence[AttachmentKey]) -> None:
        """GC each plugin with the attachments still valid (1.1.0 configs, unless ``disableGC``)."""
        if not at_least(self.network.cni_version, "1.1.0") or self.network.disable_gc:
            return
        attachments = [{"containerID": k.container_id, "ifname": k.ifname} for k in valid]
        # The spec's key, and the one an early 1.1 text used (libcni sends both).
        extra = {"cni.dev/valid-attachments": attachments, "cni.dev/attachments": attachments}
        errors: list[MoorageError] = []
        for plugin in self.network.plugins:
            try:
                await self._verb(plugin, "GC", extra)
            except MoorageError as exc:
                errors.append(exc)
        raise_first(errors)

    async def _verb(self, plugin: Mapping[str, Any], command: str, extra: Mapping[str, Any]) -> None:
        plugin_type = str(plugin["type"])
        stdin = plugin_stdin(self.network.name, self.network.cni_version, plugin, extra=extra)
        call = PluginCall(
            plugin_type,
            self.plugin_path(plugin_type),
            command,
            stdin,
            cni_env(command, self.bin_dirs),
            self.network.name,
        )
        await exec_plugin(call, self.timeout)


def raise_first(errors: Sequence[MoorageError]) -> None:
    """Raise the first of ``errors``, with the others' messages appended; nothing if there are none."""
    if not errors:
        return
    first = errors[0]
    if len(errors) == 1:
        raise first
    others = "; ".join(e.message for e in errors[1:])
    if isinstance(first, PluginError):
        raise PluginError(
            f"{first.message}; also: {others}",
            plugin=first.plugin,
            command=first.command,
            code=first.code,
            details=first.details,
        ) from first
    raise type(first)(f"{first.message}; also: {others}") from first
