"""The composition root: builds every part from the config, recovers state, serves, and shuts down.

Start-up order: lock the root (one daemon per root), open and migrate the store, load what it holds, then
bind the socket, so no request is served before recovery is done. SIGTERM and SIGINT stop serving
gracefully; SIGHUP re-reads the config file, applies what can change live (logging) and names the keys that
need a restart. State lives in the store, so neither a reload nor a restart loses it.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from moorage import config as config_mod
from moorage.api import server
from moorage.api.admin import AdminService
from moorage.api.image_service import ImageService
from moorage.api.runtime_service import RuntimeService
from moorage.config import Config
from moorage.errors import ConfigError, MoorageError, StartupError
from moorage.images.service import ImageManager
from moorage.node import cgroupinfo, limits
from moorage.node.cgroupinfo import CgroupHost
from moorage.node.cni import Cni, NetworkConfig
from moorage.node.sdnotify import Notifier
from moorage.observe import daemon_log, metrics
from moorage.runtime.containers import Containers
from moorage.runtime.exec.execs import Execs
from moorage.runtime.pods import pause_image
from moorage.runtime.pods.network import PodNetwork
from moorage.runtime.pods.pod_cidr import PodCidr
from moorage.runtime.pods.sandboxes import Sandboxes
from moorage.state.events import EventBus
from moorage.store.db import Store
from moorage.store.records import CONTAINERS, POD_SANDBOXES, Records
from moorage.streaming.server import StreamingServer

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
LATER_IMPORTS = ("moorage.images.pull", "moorage.images.registry_client", "moorage.streaming.wschannels")
"""Modules the daemon does not import to start (httpx: about 50 ms, wsproto), imported in a thread once it serves,
so the first PullImage or WebSocket stream does not hold the event loop while they load."""
RELOADABLE = ("log.level", "log.format")


class Daemon:
    def __init__(self, config: Config, config_path: str | None, overrides: Mapping[str, Any]) -> None:
        self.config = config
        self._config_path = config_path
        self._overrides = dict(overrides)
        self._stop = asyncio.Event()
        self._notifier = Notifier.from_environment()  # systemd's socket, kept from every child process

    async def run(self) -> None:
        root, state, socket = Path(self.config.root), Path(self.config.state), Path(self.config.socket)
        cgroup_host = _cgroup_host(self.config.cgroup_driver)
        open_files = limits.raise_open_files()
        _make_dir(root, 0o700)
        _make_dir(state, 0o711)
        lock_fd = _lock_root(root)
        store = Store(root)
        images: ImageManager | None = None
        try:
            await store.open()
            pod_cidr = PodCidr(store)
            await pod_cidr.load()
            images = ImageManager(root, store, lambda: self.config)
            await images.repair()
            cni = Cni(
                Path(self.config.cni.conf_dir),
                [Path(d) for d in self.config.cni.bin_dirs],
                root / "cni",
                timeout=self.config.cni.plugin_timeout,
                pod_cidrs=lambda: pod_cidr.value,
            )
            bus = EventBus()
            pods = Records(store, POD_SANDBOXES, bus)
            containers = Containers(Records(store, CONTAINERS, bus), lambda: self.config, images, pods, cgroup_host)
            sandboxes = Sandboxes(pods, lambda: self.config, PodNetwork(cni), containers)
            await self._local_pause_image(images, root)
            await sandboxes.load()
            await containers.load()
            await containers.recover()
            await sandboxes.recover()
            execs = Execs(sandboxes, containers)
            streaming = StreamingServer(
                self.config.streaming.address,
                execs,
                idle_timeout=self.config.streaming.idle_timeout,
                open_files=open_files,
            )
            await streaming.start()
            runtime = RuntimeService(lambda: self.config, pod_cidr, sandboxes, execs, streaming)
            admin = AdminService(images)
            grpc_server = await server.start(socket, runtime, ImageService(images), (admin.handler(),))
            background = [
                asyncio.create_task(containers.monitor(), name="exit-monitor"),
                asyncio.create_task(cni.watch(on_change=_log_network), name="cni-watch"),
                asyncio.create_task(
                    containers.usage.sync_disk(containers.all, self.config.runtime.disk_usage_period),
                    name="disk-usage",
                ),
            ]
            self._serve_metrics()
            self._install_signal_handlers()
            log.info(
                "serving",
                socket=str(socket),
                root=str(root),
                state=str(state),
                pid=os.getpid(),
                cgroup_driver=self.config.cgroup_driver,
                cgroups=cgroup_host.mode,
                streaming=streaming.base_url,
            )
            self._notifier.send("READY=1", f"MAINPID={os.getpid()}", "STATUS=serving on " + str(socket))
            background.append(asyncio.create_task(asyncio.to_thread(_import_later_modules), name="later-imports"))
            await self._stop.wait()
            log.info("shutting down", grace_seconds=SHUTDOWN_GRACE_SECONDS)
            await server.stop(grpc_server, socket, SHUTDOWN_GRACE_SECONDS)
            await streaming.stop()
            for task in background:
                task.cancel()
        finally:
            if images is not None:
                await images.close()
            await store.close()
            os.close(lock_fd)
        log.info("stopped")

    async def _local_pause_image(self, images: ImageManager, root: Path) -> None:
        """Build moorage's own pause image when sandbox_image names it; a missing program is only a warning
        (pods that share a PID namespace then fail with its message)."""
        if not pause_image.is_local(self.config.sandbox_image):
            return
        try:
            binary = pause_image.pause_binary(self.config.runtime.pause_binary)
            image_id = await pause_image.ensure(images, self.config.sandbox_image, binary, root / "tmp")
        except MoorageError as exc:
            log.warning("local pause image not available", error=exc.message)
            return
        log.info("local pause image ready", image=self.config.sandbox_image, image_id=image_id)

    def _serve_metrics(self) -> None:
        if self.config.metrics.address:
            host, port = metrics.serve(self.config.metrics.address)
            log.info("metrics served", address=f"{host}:{port}")

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def stop(self) -> None:
        """SIGTERM, SIGINT: begin the graceful stop, and tell systemd it is under way."""
        if not self._stop.is_set():
            self._notifier.send("STOPPING=1")
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config; a bad file is logged and the running config kept."""
        try:
            new = config_mod.load(self._config_path, self._overrides)
        except ConfigError as exc:
            log.error("config reload refused; keeping the running config", error=str(exc))
            return
        old_keys = {k: v for k, v, _ in config_mod.iter_keys(self.config)}
        new_keys = {k: v for k, v, _ in config_mod.iter_keys(new)}
        changed = sorted(k for k in new_keys if new_keys[k] != old_keys[k])
        restart = [k for k in changed if k not in RELOADABLE]
        live = {k: new_keys[k] for k in RELOADABLE}
        self.config = config_mod.with_values(self.config, live, source=self._config_path or "defaults")
        daemon_log.configure(self.config.log.level, self.config.log.format)
        log.info("config reloaded", applied=[k for k in changed if k in RELOADABLE], need_restart=restart)


def _import_later_modules() -> None:
    for name in LATER_IMPORTS:
        importlib.import_module(name)


def _log_network(network: NetworkConfig | None, error: str) -> None:
    if error:
        log.warning("cni network config broken; pods cannot be networked", error=error)
    elif network is None:
        log.warning("no cni network config yet; NetworkReady is false until one appears")
    else:
        log.info("cni network ready", network=network.name, path=str(network.path), plugins=network.plugin_types)


def _cgroup_host(driver: str) -> CgroupHost:
    """The node's cgroup layout, read once; the systemd driver asks systemd for every container's scope, so refuse
    to start where systemd is not running."""
    try:
        host = cgroupinfo.detect()
    except (OSError, cgroupinfo.NoCgroupsError) as exc:
        raise StartupError(f"cannot tell the node's cgroup layout: {exc}") from exc
    if driver == "systemd" and not host.systemd:
        raise StartupError(
            "cgroup_driver = systemd, but systemd is not running on this node (/run/systemd/system is missing): "
            "set cgroup_driver = cgroupfs here, and the kubelet's cgroupDriver to cgroupfs too"
        )
    return host


def _make_dir(path: Path, mode: int) -> None:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create {path}: {exc.strerror}") from exc


def _lock_root(root: Path) -> int:
    """Hold an exclusive lock on the root for the daemon's life; a second daemon on it is refused."""
    path = root / "moorage.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"root {root} is in use by another moorage daemon (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def serve(config_path: str | None, overrides: Mapping[str, Any]) -> None:
    """``moorage serve``: load the config, configure logging and run until stopped."""
    config = config_mod.load(config_path, overrides)
    daemon_log.configure(config.log.level, config.log.format)
    asyncio.run(Daemon(config, config_path, overrides).run())
