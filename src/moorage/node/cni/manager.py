"""The node's pod network as the runtime uses it: set up, tear down, check, status, GC, config changes.

Lifecycle of one pod (``cni = Cni(conf_dir, bin_dirs, cache_dir, timeout=30)``)::

    res = await cni.setup(Attachment(container_id=pod_id, netns=str(netns_path), pod_name="web-0",
                                     namespace="default", pod_uid=uid, port_mappings=(PortMapping(80, 8080),)))
    res.pod_ips                 # ("10.88.0.5", "fd00:88::5"): primary first
    await cni.check(att)        # CHECK (0.4.0+), e.g. for PodSandboxStatus
    await cni.teardown(att)     # DEL; again after a restart, with the netns gone, or never set up: all fine

    ready, reason = await cni.status()           # NetworkReady for the kubelet
    await cni.gc(keys_of_every_live_pod)         # after recovery: DEL what the daemon no longer knows
    tg.create_task(cni.watch())                  # log config changes; every call re-reads a changed conf_dir

Rules kept here: one operation at a time per attachment (the spec forbids parallel calls for one container);
the cache entry is written before the first ADD (persist first) and removed after the last DEL; a failed ADD
is rolled back (DEL of every plugin that ran, the failing one included, so IPAM leases are released), shielded
from the caller's cancellation, and the error raised names the failing plugin and its message. The network
config is re-read whenever a file in ``conf_dir`` changed (name, size, mtime or inode), so a config that
appears after start is used without a restart; attachments made with an older config are torn down with the
config they were made with (from the cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from moorage.errors import FailedPrecondition, MoorageError, NotFound
from moorage.node.cni.attachment import Attachment, AttachmentKey, AttachResult, capability_args, cni_args
from moorage.node.cni.cache import AttachmentCache, CacheEntry
from moorage.node.cni.chain import Chain, raise_first
from moorage.node.cni.config import (
    CONFIG_SUFFIXES,
    CniConfigError,
    NetworkConfig,
    find_plugin,
    load_network,
    with_pod_cidrs,
)
from moorage.node.cni.result import parse_result

log = structlog.get_logger(__name__)

Fingerprint = tuple[tuple[str, int, int, int], ...] | None
RECENT_NS = 2_000_000_000


class NetworkNotReady(FailedPrecondition):
    """There is no CNI network config yet; the message names the directory searched."""


class Cni:
    def __init__(
        self,
        conf_dir: Path,
        bin_dirs: Sequence[Path],
        cache_dir: Path,
        timeout: float = 60.0,
        pod_cidrs: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.pod_cidrs = pod_cidrs  # the kubelet's pod CIDR(s) from UpdateRuntimeConfig
        self.bin_dirs = tuple(Path(d) for d in bin_dirs)
        self.cache = AttachmentCache(Path(cache_dir))
        self.timeout = timeout
        self._fingerprint: Fingerprint = None
        self._loaded = False
        self._network: NetworkConfig | None = None
        self._error: CniConfigError | None = None
        self._locks: dict[AttachmentKey, tuple[asyncio.Lock, int]] = {}
        self._usable: tuple[NetworkConfig, tuple[str, ...], NetworkConfig] | None = None
        self._found_plugins: dict[str, str] = {}  # plugin type → the file status found it as
        self._rollbacks: set[asyncio.Future[None]] = set()  # strong refs: a rollback outlives a cancelled caller

    # --- the network config -------------------------------------------------------------------------------

    def network(self) -> NetworkConfig | None:
        """The current network config, re-read if ``conf_dir`` changed; None if there is none.
        Raises :class:`CniConfigError` while the chosen file is broken."""
        fingerprint = self._fingerprint_now()
        if not self._loaded or fingerprint != self._fingerprint or _recently_changed(fingerprint):
            self._fingerprint = fingerprint
            with contextlib.suppress(CniConfigError):
                self.reload()
        if self._error is not None:
            raise CniConfigError(self._error.message)
        return self._network

    def reload(self) -> NetworkConfig | None:
        """Read ``conf_dir`` now. Returns the network (None if none); raises :class:`CniConfigError`."""
        previous = self._network.path if self._network else None
        self._loaded = True
        try:
            self._network, self._error = load_network(self.conf_dir), None
        except CniConfigError as exc:
            if self._error is None or self._error.message != exc.message:
                log.warning("cni config broken", error=exc.message)
            self._network, self._error = None, exc
            raise
        if self._network is not None and self._network.path != previous:
            log.info("cni network loaded", network=self._network.name, path=str(self._network.path))
        return self._network

    async def watch(
        self, interval: float = 1.0, on_change: Callable[[NetworkConfig | None, str], None] | None = None
    ) -> None:
        """Poll ``conf_dir`` every ``interval`` seconds forever; call ``on_change(network, error)`` when what
        it holds changes (``error`` is the broken file's message, or "")."""
        last: object = object()
        while True:
            try:
                network, error = self.network(), ""
            except CniConfigError as exc:
                network, error = None, exc.message
            state = (network, error)
            if state != last:
                last = state
                if on_change is not None:
                    on_change(network, error)
            await asyncio.sleep(interval)

    def _fingerprint_now(self) -> Fingerprint:
        try:
            entries = list(os.scandir(self.conf_dir))
        except OSError:
            return None
        marks = []
        for entry in entries:
            if not entry.name.endswith(CONFIG_SUFFIXES):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            marks.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sorted(marks))

    def usable_network(self) -> NetworkConfig | None:
        """:meth:`network` with the pod CIDR filled in where the config asks for it (see ``with_pod_cidrs``)."""
        network = self.network()
        if network is None:
            return None
        cidrs = tuple(self.pod_cidrs())
        made = self._usable
        if made is None or made[0] is not network or made[1] != cidrs:  # once per config and pod CIDRs
            made = self._usable = (network, cidrs, with_pod_cidrs(network, cidrs))
        return made[2]

    def _require_network(self) -> NetworkConfig:
        network = self.usable_network()
        if network is None:
            raise NetworkNotReady(f"no CNI network config (*.conflist, *.conf, *.json) in {self.conf_dir}")
        return network

    # --- per-pod operations -------------------------------------------------------------------------------

    async def setup(self, att: Attachment) -> AttachResult:
        """ADD ``att`` to the network; on any failure everything done is rolled back before the error."""
        async with self._locked(att.key):
            network = self._require_network()
            args = capability_args(att)
            pairs = tuple(cni_args(att))
            chain = Chain(network, self.bin_dirs, self.timeout, att.key, att.netns, pairs, args)
            chain.require_plugins()
            entry = CacheEntry(network.name, att.key, att.netns, str(network.path), network.as_list(), args, pairs)
            await asyncio.to_thread(self.cache.write, entry)
            progress: list[Mapping[str, Any]] = []
            try:
                raw = await chain.add(progress)
                result = parse_result(raw, plugin=network.plugin_types[-1])
                await asyncio.to_thread(self.cache.write, replace(entry, result=raw))
            except BaseException as exc:
                undo = asyncio.ensure_future(self._rollback(chain, entry, progress, exc))
                self._rollbacks.add(undo)
                undo.add_done_callback(self._rollbacks.discard)
                await asyncio.shield(undo)
                raise
            pod_ips = result.pod_ips(att.ifname)
            log.info("cni attached", network=network.name, attachment=str(att.key), pod_ips=pod_ips)
            return AttachResult(network.name, result, pod_ips, raw)

    async def _rollback(
        self, chain: Chain, entry: CacheEntry, progress: list[Mapping[str, Any]], cause: BaseException
    ) -> None:
        """DEL the plugins that ran (the one that failed too: it may have done part of its work)."""
        upto = min(len(progress), len(chain.network.plugins) - 1)
        prev = progress[-1] if progress else None
        try:
            await chain.delete(prev, netns=usable_netns(chain.netns), upto=upto)
            await asyncio.to_thread(self.cache.remove, entry.network, entry.key)
        except Exception as exc:  # never hide the cause: report the rollback's failure next to it
            message = exc.message if isinstance(exc, MoorageError) else repr(exc)
            log.warning("cni rollback failed; kept for teardown", attachment=str(entry.key), error=message)
            if isinstance(cause, MoorageError):
                cause.message += f" (rollback failed too: {message})"
                cause.args = (cause.message,)
            with contextlib.suppress(MoorageError):  # the entry written before ADD stays, with what is known
                await asyncio.to_thread(self.cache.write, replace(entry, result=prev))

    async def teardown(self, att: Attachment) -> None:
        """DEL ``att`` in reverse plugin order. Idempotent; works with no cache entry and with the netns gone."""
        async with self._locked(att.key):
            entries = await asyncio.to_thread(self.cache.find, att.key)
            if not entries:
                await self._teardown_uncached(att)
                return
            errors: list[MoorageError] = []
            for entry in entries:
                try:
                    await self._delete_entry(entry, att.netns or entry.netns)
                except MoorageError as exc:
                    errors.append(exc)
            raise_first(errors)

    async def _teardown_uncached(self, att: Attachment) -> None:
        try:
            network = self.usable_network()
        except CniConfigError as exc:
            log.warning("cni teardown skipped: no cache entry and the config is broken", error=exc.message)
            return
        if network is None:
            return
        chain = Chain(
            network, self.bin_dirs, self.timeout, att.key, att.netns, tuple(cni_args(att)), capability_args(att)
        )
        await chain.delete(None, netns=usable_netns(att.netns))
        await asyncio.to_thread(self.cache.remove, network.name, att.key)  # a damaged entry, if any

    async def _delete_entry(self, entry: CacheEntry, netns: str) -> None:
        chain = Chain(
            entry.network_config(),
            self.bin_dirs,
            self.timeout,
            entry.key,
            entry.netns,
            entry.cni_args,
            entry.capability_args,
        )
        await chain.delete(entry.result, netns=usable_netns(netns))
        await asyncio.to_thread(self.cache.remove, entry.network, entry.key)
        log.info("cni detached", network=entry.network, attachment=str(entry.key))

    async def check(self, att: Attachment) -> None:
        """CHECK ``att`` against what its ADD returned; raises NotFound if it was never set up."""
        async with self._locked(att.key):
            entries = await asyncio.to_thread(self.cache.find, att.key)
            if not entries:
                raise NotFound(f"no CNI attachment {att.key} (never set up, or torn down)")
            entry = entries[0]
            if entry.result is None:
                raise FailedPrecondition(f"CNI attachment {att.key}: ADD did not complete")
            chain = Chain(
                entry.network_config(),
                self.bin_dirs,
                self.timeout,
                entry.key,
                att.netns or entry.netns,
                entry.cni_args,
                entry.capability_args,
            )
            await chain.check(entry.result)

    # --- node-wide ----------------------------------------------------------------------------------------

    async def status(self) -> tuple[bool, str]:
        """(NetworkReady, why not): no config, a broken config, missing plugin binaries, or a 1.1 plugin's
        STATUS failing. The reason is "" when ready."""
        try:
            network = self.usable_network()
        except CniConfigError as exc:
            return False, exc.message
        if network is None:
            return False, f"no CNI network config (*.conflist, *.conf, *.json) in {self.conf_dir}"
        chain = Chain(network, self.bin_dirs, self.timeout, AttachmentKey("status"))
        try:
            if not self._plugins_still_there(network):
                chain.require_plugins()
                self._found_plugins = {t: str(find_plugin(t, self.bin_dirs)) for t in network.plugin_types}
            await chain.status()
        except MoorageError as exc:
            return False, exc.message
        return True, ""

    def _plugins_still_there(self, network: NetworkConfig) -> bool:
        """Whether each plugin of ``network`` is still the executable file it was found as by the last status
        (Status asks every few seconds: a file check each, not a search of every bin dir)."""
        found = self._found_plugins
        for plugin_type in network.plugin_types:
            path = found.get(plugin_type)
            if path is None or not (os.path.isfile(path) and os.access(path, os.X_OK)):
                return False
        return True

    async def gc(self, valid: Iterable[AttachmentKey]) -> None:
        """DEL every cached attachment not in ``valid``, then (1.1 configs) send the plugins GC with ``valid``.
        Everything is tried; the first failure is raised at the end. ``valid`` must include attachments being
        set up right now."""
        keep = set(valid)
        errors: list[MoorageError] = []
        for stale in await asyncio.to_thread(self.cache.entries):
            if stale.key in keep:
                continue
            async with self._locked(stale.key):
                entry = await asyncio.to_thread(self.cache.load, stale.network, stale.key)
                if entry is None:
                    continue
                try:
                    await self._delete_entry(entry, entry.netns)
                except MoorageError as exc:
                    errors.append(exc)
        try:
            network = self.usable_network()
        except CniConfigError as exc:
            errors.append(exc)
            network = None
        if network is not None:
            try:
                await Chain(network, self.bin_dirs, self.timeout, AttachmentKey("gc")).gc(
                    sorted(keep, key=lambda k: (k.container_id, k.ifname))
                )
            except MoorageError as exc:
                errors.append(exc)
        raise_first(errors)

    @contextlib.asynccontextmanager
    async def _locked(self, key: AttachmentKey) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _recently_changed(fingerprint: Fingerprint) -> bool:
    """Whether a config file was modified within the last :data:`RECENT_NS`: a second write within the same
    timestamp tick (same size) would not change the fingerprint, so such files are read again anyway."""
    if not fingerprint:
        return False
    return max(mtime for _, mtime, _, _ in fingerprint) > time.time_ns() - RECENT_NS


def usable_netns(path: str) -> str:
    """``path`` if it still is a namespace file (nsfs), else "" (gone: the spec lets DEL run without one)."""
    if not path:
        return ""
    try:
        st = os.stat(path)
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return ""
    return path if st.st_dev == ours.st_dev else ""
