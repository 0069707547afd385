"""StartContainer, StopContainer (its stop signal, then SIGKILL), RemoveContainer, and the exit monitor.

conmon records each exit code in an exit file; :meth:`Lifecycle.monitor` turns them into EXITED records (exits
that happened while moorage was down are recorded by :mod:`.recovery`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from moorage.errors import FailedPrecondition, MoorageError, NotFound
from moorage.runtime.containers import recovery, signals
from moorage.runtime.containers.base import KILL_WAIT_SECONDS, ContainerBase, log, send_signal, wait_for
from moorage.runtime.containers.checkpoint import restore
from moorage.state.models import CONTAINER_CREATED, CONTAINER_EXITED, CONTAINER_RUNNING

MONITOR_INTERVAL = 0.2


class Lifecycle(ContainerBase):
    async def start(self, container_id: str) -> None:
        record = await self.get(container_id)
        if record.state != CONTAINER_CREATED:
            raise FailedPrecondition(f"container {container_id} is {record.state}, not CREATED; it cannot start")
        runtime = await self.runtime_of(record)
        started = time.time_ns()
        if restore.pending(self, container_id):  # created from a checkpoint archive: restored, not started
            pid = await restore.start(self, record, runtime)
            recovery.write_start_time(self.conmon_paths(container_id), started)
            await self.records.save(record.moved(CONTAINER_RUNNING, started_at=started, pid=pid))
            await self._record_exit(container_id)
            return
        recovery.write_start_time(self.conmon_paths(container_id), started)  # for a start a crash cuts short
        try:
            await runtime.start(container_id)
        except MoorageError:
            state = await runtime.state(container_id)
            if state is not None and state.get("status") == "running":
                # started by a concurrent StartContainer: as for a RUNNING record (containerd, CRI-O: an error)
                message = f"container {container_id} is already running; it cannot start again"
                raise FailedPrecondition(message) from None
            raise
        await self.records.save(record.moved(CONTAINER_RUNNING, started_at=started))
        await self._record_exit(container_id)  # it may be done already, before the monitor could see it running
        log.info("container started", container=container_id)

    async def stop(self, container_id: str, timeout: int) -> None:
        """The container's stop signal (config.stop_signal, else the image's STOPSIGNAL, else SIGTERM: kept with
        it at create), then SIGKILL after ``timeout`` seconds; a stopped container is left as it is (api.proto)."""
        record = await self.get(container_id)
        if record.state not in (CONTAINER_RUNNING, CONTAINER_CREATED):
            return
        if record.state == CONTAINER_CREATED and restore.pending(self, container_id):  # no process to signal yet
            killed = 128 + signal.SIGKILL  # as a created container's killed init reports
            await self.records.save(
                record.moved(CONTAINER_EXITED, exit_code=killed, finished_at=time.time_ns(), reason="Error")
            )
            return
        runtime = await self.runtime_of(record)
        exit_file = self.conmon_paths(container_id).exit_file
        if timeout > 0:
            await send_signal(runtime, container_id, signals.to_send(record.status.stop_signal))
            if await wait_for(exit_file, timeout):
                await self._record_exit(container_id)
                await self.runtime_deletes.wait(container_id)  # the runtime delete the exit started
                return
        await send_signal(runtime, container_id, signal.SIGKILL)
        if not await wait_for(exit_file, KILL_WAIT_SECONDS):
            raise FailedPrecondition(f"container {container_id} did not exit {KILL_WAIT_SECONDS} s after SIGKILL")
        await self._record_exit(container_id)
        await self.runtime_deletes.wait(container_id)

    async def remove(self, container_id: str) -> None:
        record = await self.get(container_id)
        if record.state in (CONTAINER_RUNNING, CONTAINER_CREATED):
            await self.stop(container_id, 0)
        sandbox = await self.pods.get(record.sandbox_id)
        await self._undo(container_id, sandbox.status.runtime_handler)
        self.usage.forget(container_id)
        log.info("container removed", container=container_id)

    # --- exits ----------------------------------------------------------------------------------------------

    async def monitor(self) -> None:
        """Record every exit conmon reports, for as long as the daemon runs."""
        exits = self.conmon_paths("x").exits_dir
        seen: set[str] = set()
        while True:
            names = set(os.listdir(exits)) if exits.is_dir() else set()
            seen &= names  # forget removed containers
            for name in names - seen:
                try:
                    await self._record_exit(name)
                except NotFound:
                    pass  # a pause container, or removed meanwhile
                except Exception as exc:  # one unreadable exit must not stop the monitor; retried next round
                    log.error("cannot record a container exit", container=name, error=str(exc))
                    continue
                seen.add(name)
            await asyncio.sleep(MONITOR_INTERVAL)
