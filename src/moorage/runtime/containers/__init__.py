"""Containers: Create, Start, Stop (signal, then SIGKILL), Remove, ExecSync and friends, and the exit monitor.

Each container runs under its own conmon (CRI-O's model): conmon holds its stdio, writes the CRI log file
and records the exit code, so containers keep running and logging while moorage restarts. The class is split
by RPC group, as CRI-O and containerd split their servers:

- :mod:`.base`: the collaborators, a container's paths and records, taking a container apart;
- :mod:`.create`: CreateContainer and the pause container;
- :mod:`.lifecycle`: Start, Stop, Remove and the exit monitor;
- :mod:`.recovery`: start-up recovery, records reconciled with the OCI runtime and conmon's files;
- :mod:`.deletes`: the OCI runtime's state of a container deleted when it exits, in the background;
- :mod:`.operations`: ExecSync, UpdateContainerResources, ReopenContainerLog;
- :mod:`.image_volumes`: image volumes (CRI ``Mount.image``), mounted by create and taken apart with the rest;
- :mod:`.checkpoint`: CheckpointContainer, a running container to a CRIU checkpoint archive;
- :mod:`.restore`: CreateContainer from such an archive, restored by StartContainer.
"""

from __future__ import annotations

from moorage.runtime.containers.checkpoint.dump import Checkpoint
from moorage.runtime.containers.create import Create
from moorage.runtime.containers.lifecycle import Lifecycle
from moorage.runtime.containers.operations import Operations
from moorage.runtime.containers.recovery import Recovery

__all__ = ["Containers"]


class Containers(Create, Lifecycle, Operations, Recovery, Checkpoint):
    """Every container of the node (pause containers aside, which live and die with their pod)."""
