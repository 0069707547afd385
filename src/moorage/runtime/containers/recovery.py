"""Start-up recovery: every container record is brought back in line with what the node holds.

A SIGKILL of the daemon can cut any transition between its side effect and the record's update. At start-up,
before anything is served:

- CREATING (a CreateContainer cut mid-way) is undone: whatever exists of it is taken apart, the record goes.
- CREATED and RUNNING records are reconciled with the OCI runtime's state (one ``list`` per handler) and
  conmon's files:

  ================  ===================  ==============================================================
  record            runtime says         becomes
  ================  ===================  ==============================================================
  CREATED           running              RUNNING, started at the time StartContainer left in conmon's
                                         directory just before ``<runtime> start`` (a start the crash cut)
  CREATED           stopped, started     RUNNING as above, then EXITED with conmon's exit code
  CREATED/RUNNING   stopped              EXITED with the code in conmon's exit file
  CREATED/RUNNING   (no such container)  EXITED with conmon's code, else 255 "Unknown" (containerd's
                    and no exit file     unknownExitCode): nothing runs it any more, nothing will exit
  ================  ===================  ==============================================================

An EXITED container the OCI runtime still has (its delete after the exit was cut short or failed) is deleted
from the runtime in the background (:mod:`.deletes`). A running container is never touched: conmon kept it
and its log while the daemon was away. Last, what no
record owns (a failed undo's leftovers: runtime containers, bundles, writable layers, conmon's files) is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from moorage.errors import MoorageError
from moorage.node import leftovers
from moorage.runtime.containers import conmon
from moorage.runtime.containers.base import ContainerBase, log
from moorage.runtime.containers.checkpoint import restore
from moorage.state.models import (
    CONTAINER_CREATED,
    CONTAINER_CREATING,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    ContainerRecord,
)

UNKNOWN_EXIT_CODE = 255
STARTED_FILE = "started"
"""In conmon's directory of a container: the wall-clock ns StartContainer called ``<runtime> start`` at."""


def write_start_time(paths: conmon.ConmonPaths, started: int) -> None:
    """Note the start time before the runtime starts the container (not fsynced: it has to outlive the daemon,
    not the node, whose reboot takes the container with it)."""
    (paths.container_dir / STARTED_FILE).write_text(str(started))


def read_start_time(paths: conmon.ConmonPaths) -> int | None:
    try:
        return int((paths.container_dir / STARTED_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


class Recovery(ContainerBase):
    async def recover(self) -> None:
        live: list[ContainerRecord] = []
        for record in self.all():
            if record.state == CONTAINER_CREATING:
                sandbox = await self.pods.get(record.sandbox_id)
                log.warning("removing a container a crash interrupted while it was made", container=record.id)
                await self._undo(record.id, sandbox.status.runtime_handler)
            elif record.state in (CONTAINER_CREATED, CONTAINER_RUNNING):
                live.append(record)
            else:  # EXITED: a runtime delete after the exit that a crash cut short or that failed, done now
                self.runtime_deletes.after_exit(await self.runtime_of(record), record.id)
        states = await self._runtime_states(live)
        for record in live:
            await self._reconcile(record, states.get(record.id, "unknown"))
        await self._collect_strays()

    async def _collect_strays(self) -> None:
        """What no container record and no pod (a pause container has its pod's id) owns: runtime containers,
        bundles, writable layers and conmon's files a failed or interrupted undo left."""
        owned = {r.id for r in self.all()} | {s.id for s in self.pods.all()}
        for handler in sorted(self.config().runtime.handlers):
            try:
                runtime = self.runtime(handler)
                listed = await runtime.list_containers()
            except MoorageError as exc:
                log.warning("cannot ask the OCI runtime for its containers", handler=handler, error=exc.message)
                continue
            for orphan in sorted({str(c.get("id")) for c in listed} - owned):
                log.warning("deleting a runtime container no record owns", container=orphan, handler=handler)
                with contextlib.suppress(MoorageError):
                    await runtime.delete(orphan, force=True)
        paths = self.conmon_paths("x")
        places = (
            self.state / "bundles",
            self.root / "containers",
            paths.container_dir.parent,
            paths.exits_dir,
            paths.socket_dir,
        )
        for place in places:
            for stray in await asyncio.to_thread(leftovers.strays, place, owned):
                log.warning("removing files of a container no record owns", path=str(stray))
                try:
                    await asyncio.to_thread(leftovers.remove_tree, stray)
                except MoorageError as exc:
                    log.error("cannot remove files of a container no record owns", path=str(stray), error=exc.message)

    async def _runtime_states(self, records: Iterable[ContainerRecord]) -> dict[str, str]:
        """Container id → the runtime's status (created, running, stopped, paused), one ``list`` per handler;
        "unknown" for every container of a handler whose runtime cannot be asked."""
        states: dict[str, str] = {}
        handlers: dict[str, list[str]] = {}
        for record in records:
            sandbox = await self.pods.get(record.sandbox_id)
            handlers.setdefault(sandbox.status.runtime_handler, []).append(record.id)
        for handler, ids in handlers.items():
            try:
                listed = await self.runtime(handler).list_containers()
            except MoorageError as exc:
                log.error("cannot ask the OCI runtime for its containers", handler=handler, error=exc.message)
                states.update(dict.fromkeys(ids, "unknown"))
                continue
            known = {str(c.get("id")): str(c.get("status", "")) for c in listed}
            states.update({container_id: known.get(container_id, "") for container_id in ids})
        return states

    async def _reconcile(self, record: ContainerRecord, runtime_state: str) -> None:
        """``runtime_state``: the runtime's status, "" when it has no such container, "unknown" if not asked."""
        if record.state == CONTAINER_CREATED and runtime_state == "" and restore.pending(self, record.id):
            return  # made from a checkpoint archive: no runtime container until StartContainer restores it
        paths = self.conmon_paths(record.id)
        if record.state == CONTAINER_CREATED and runtime_state in ("running", "stopped", "paused"):
            started = read_start_time(paths)
            if started is not None or runtime_state != "stopped":  # stopped and never started: killed in CREATED
                started = started or _now_floor(record)
                record = record.moved(CONTAINER_RUNNING, started_at=started)
                await self.records.save(record)
                log.warning("a start the crash cut short: the container runs", container=record.id, started_at=started)
        await self._record_exit(record.id)
        record = await self.get(record.id)
        if runtime_state != "" or record.state == CONTAINER_EXITED or conmon.conmon_pid(paths) is not None:
            return  # running, created, stopped with conmon still writing its exit file, or not asked
        now = max(time.time_ns(), record.status.started_at)
        await self.records.save(
            record.moved(
                CONTAINER_EXITED,
                exit_code=UNKNOWN_EXIT_CODE,
                finished_at=now,
                reason="Unknown",
                message="the OCI runtime no longer has this container and conmon recorded no exit (node rebooted?)",
            )
        )
        log.warning("container lost while the daemon was down", container=record.id, exit_code=UNKNOWN_EXIT_CODE)


def _now_floor(record: ContainerRecord) -> int:
    """A start time for a running container whose start left no time: not before it was created."""
    return max(time.time_ns(), record.created_at)
