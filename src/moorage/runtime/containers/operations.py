"""UpdateContainerResources and ReopenContainerLog: what is done to a live container (ExecSync is
:mod:`moorage.runtime.exec.execs`')."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from moorage.cri import pb
from moorage.errors import FailedPrecondition
from moorage.runtime.containers.base import ContainerBase, log, wait_for
from moorage.runtime.spec import resources
from moorage.state.models import CONTAINER_CREATED, CONTAINER_RUNNING


class Operations(ContainerBase):
    async def update_resources(self, container_id: str, linux: pb.LinuxContainerResources) -> None:
        """Apply new limits to a running container; what it has then (the update over what it had: the runtime
        changes only what the update sets) is kept in its config and reported in ContainerStatus.resources."""
        record = await self.get(container_id)
        if record.state not in (CONTAINER_RUNNING, CONTAINER_CREATED):
            raise FailedPrecondition(f"container {container_id} is {record.state}; only a live one can be updated")
        await (await self.runtime_of(record)).update(container_id, resources.build(linux, []))
        config = pb.ContainerConfig.FromString(record.config)
        current = resources.from_record(record.status.resources) if record.status.resources else config.linux.resources
        merged = resources.merge(current, linux)
        config.linux.resources.CopyFrom(resources.merge(config.linux.resources, linux))
        blob = config.SerializeToString()
        await self.records.patch(container_id, "config = ?", (blob,), lambda r: replace(r, config=blob))
        record = await self.get(container_id)
        await self.records.save(replace(record, status=replace(record.status, resources=resources.to_record(merged))))
        log.info("container resources updated", container=container_id)

    async def reopen_log(self, container_id: str) -> None:
        """After the kubelet rotated the log file: conmon opens ``log_path`` anew (ctl message 2)."""
        record = await self.get(container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state}; only a running one has a log open")
        ctl = self.bundle(container_id) / "ctl"
        try:
            fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise FailedPrecondition(f"cannot reach conmon of container {container_id}: {exc.strerror}") from None
        try:
            os.write(fd, b"2 0 0\n")
        finally:
            os.close(fd)
        log_path = (
            Path(record.status.log_path) if record.status.log_path else self.bundle(container_id) / "container.log"
        )
        if not await wait_for(log_path, 5):
            raise FailedPrecondition(f"conmon did not reopen the log of container {container_id} at {log_path}")
