"""A container's OCI runtime state is deleted when it exits, not when it is removed.

containerd deletes the runtime's task as soon as the container exits; moorage does the same, in the
background: ``<runtime> delete`` (a process spawn, about 7 ms of a 15 ms RemoveContainer) starts once the exit
is read from conmon's files, while its record is saved, so RemoveContainer usually finds nothing left to
delete in the runtime. The cgroup of an exited container goes with it, as it does in containerd; nothing reads
an exited container's cgroup (stats and metrics cover running containers only).

Crash safety does not depend on the background delete: the runtime's own state directory (``<root>/<id>``,
runc's and crun's alike) is what counts. :meth:`RuntimeDeletes.settle` (RemoveContainer, undo, recovery) waits
for a delete still running, then forces one whenever that directory is still there: a delete the daemon's
death cut short, or one that failed. Start-up recovery's stray sweep deletes runtime containers no record owns.

StopContainer waits for the delete its own exit started (the runtime holds nothing of a container once it is
stopped, as with containerd's StopContainer); an exit the monitor sees (the container ended on its own) is
deleted while nobody waits.

Lifecycle example::

    deletes.after_exit(runtime, cid)    # the exit is read: "runc delete cid" starts in the background
    await deletes.wait(cid)             # StopContainer: done when the runtime has forgotten the container
    ...
    await deletes.settle(runtime, cid)  # RemoveContainer: "runc delete --force" only if something is left
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from moorage.errors import MoorageError, NotFound
from moorage.runtime.containers.oci import OciRuntime

log = structlog.get_logger(__name__)


class RuntimeDeletes:
    """The background runtime deletes of exited containers, by container id."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Task[None]] = {}

    def after_exit(self, runtime: OciRuntime, container_id: str) -> None:
        """Start deleting the exited container's runtime state, unless a delete of it is already running."""
        if container_id in self._pending:
            return
        task = asyncio.create_task(self._delete(runtime, container_id), name=f"runtime-delete-{container_id[:12]}")
        self._pending[container_id] = task
        task.add_done_callback(lambda _: self._pending.pop(container_id, None))

    async def wait(self, container_id: str) -> None:
        """Wait for the container's background delete, if one is running (it handles its own errors; a
        cancelled caller leaves it running)."""
        task = self._pending.get(container_id)
        if task is not None:
            await asyncio.shield(task)

    async def settle(self, runtime: OciRuntime, container_id: str) -> None:
        """Nothing of the container is left in the runtime afterwards: a background delete is waited for, and
        whatever it did not delete (or what no background delete was started for) is deleted by force."""
        await self.wait(container_id)
        if runtime.has(container_id):
            with contextlib.suppress(NotFound):
                await runtime.delete(container_id, force=True)

    async def _delete(self, runtime: OciRuntime, container_id: str) -> None:
        if not runtime.has(container_id):
            return
        try:
            await runtime.delete(container_id)  # not forced: a container that still runs is left alone
        except NotFound:
            pass
        except MoorageError as exc:  # RemoveContainer forces it later
            log.info("runtime delete after exit failed", container=container_id, error=exc.message)
        except Exception as exc:  # a bug; still, RemoveContainer forces it later
            log.error("runtime delete after exit crashed", container=container_id, error=repr(exc))
