"""CreateContainer, and the pause (infra) container of pods that share one PID namespace.

Persist first: a container is stored as CREATING before its root filesystem and its conmon are made, and
becomes CREATED once the runtime holds it; a failure undoes what was made, a crash is undone at the next start
(:meth:`~moorage.runtime.containers.lifecycle.Lifecycle.recover`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument, NotFound
from moorage.images.auth import Credentials
from moorage.node import apparmor_default, binaries
from moorage.runtime import userns
from moorage.runtime.containers import conmon, image_volumes, signals, writable
from moorage.runtime.containers.base import KILL_WAIT_SECONDS, ContainerBase, log, send_signal, wait_for
from moorage.runtime.containers.checkpoint import dump, restore
from moorage.runtime.spec import SpecInputs, build, current_capabilities, nofile_ceiling, resources
from moorage.runtime.spec.mounts import default_mounts
from moorage.state.models import (
    CONTAINER_CREATED,
    CONTAINER_CREATING,
    READY,
    ContainerRecord,
    ContainerStatus,
    SandboxRecord,
    container_name,
)
from moorage.store.image_records import ImageRecord, config_json


class Create(ContainerBase):
    async def create(self, sandbox_id: str, config: pb.ContainerConfig) -> str:
        sandbox = await self.pods.get(sandbox_id)
        if sandbox.state != READY:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is not ready ({sandbox.state})")
        restoring = await restore.plan(self, config)  # a checkpoint archive: the image it was taken of
        if restoring is not None:
            config = restoring[0]
        image = await self.images.find(config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} is not on the node; pull it first (config.image.image)")
        # The pod's config as it was run, never CreateContainerRequest.sandbox_config: the kubelet sends the same,
        # and one that differs must not widen what the pod allows (containerd and CRI-O read their stored copy).
        pod = pb.PodSandboxConfig.FromString(sandbox.config)
        if config.linux.security_context.privileged and not pod.linux.security_context.privileged:
            raise InvalidArgument(
                f"config.linux.security_context.privileged: no privileged container allowed in sandbox {sandbox_id}: "
                "the pod is not privileged (its linux.security_context.privileged is false)"
            )
        if restoring is not None and "user" in sandbox.status.namespaces:
            raise FailedPrecondition(dump.USERNS_REFUSAL.format(what=f"config.image.image {restoring[1].archive}"))
        volumes = await image_volumes.resolve(config.mounts, self.images.find)
        meta = pod.metadata
        image_doc = config_json(image)
        runtime_config = image_doc.get("config") if isinstance(image_doc.get("config"), dict) else {}
        record = ContainerRecord(
            id=secrets.token_hex(32),
            sandbox_id=sandbox_id,
            name=container_name(config.metadata.name, config.metadata.attempt, meta.name, meta.namespace, meta.uid),
            state=CONTAINER_CREATING,
            created_at=time.time_ns(),
            image_id=image.id,
            config=image_volumes.recorded(config, volumes).SerializeToString(),
            status=ContainerStatus(
                log_path=str(Path(pod.log_directory) / config.log_path) if pod.log_directory and config.log_path
                else "",
                image=config.image.image,
                stop_signal=signals.effective(
                    config.stop_signal, runtime_config.get("StopSignal") if isinstance(runtime_config, dict) else ""
                ),
                image_volumes=sorted({v.image.id for v in volumes}),
            ),
        )  # fmt: skip
        await self.records.insert(record)
        try:
            pid = await self._make(
                record, config, pod, sandbox, image, volumes=volumes, restoring=restoring[1] if restoring else None
            )
            spec = json.loads((self.bundle(record.id) / "config.json").read_text())
            applied = resources.to_record(resources.applied(spec))
            user = spec["process"]["user"]
            await self.records.save(record.moved(CONTAINER_CREATED, pid=pid, resources=applied, user=user))
        except BaseException:
            await asyncio.shield(self._undo(record.id, sandbox.status.runtime_handler))
            raise
        log.info("container created", container=record.id, name=record.name, pid=pid)
        return record.id

    async def _make(
        self,
        record: ContainerRecord,
        config: pb.ContainerConfig,
        pod: pb.PodSandboxConfig,
        sandbox: SandboxRecord,
        image: ImageRecord,
        *,
        volumes: Sequence[image_volumes.ImageVolume] = (),
        restoring: restore.RestorePlan | None = None,
    ) -> int:
        bundle = self.bundle(record.id)
        rootfs = bundle / "rootfs"
        pod_userns = sandbox.status.namespaces.get("user")
        pod_maps = userns.of_pod(pod) if pod_userns else None
        if pod_maps is not None:  # before anything is made
            userns.check_container(config, pod_maps)
        bundle.mkdir(parents=True, mode=0o700)
        if pod_maps is not None:  # in a user namespace its root must pass, and only it
            userns.private_to_pod(bundle, pod_maps)
        chain = [layer.chain_id for layer in image.layers]
        layers_userns = None
        if pod_userns and pod_maps:
            userns.check_reachable(rootfs, pod_maps.host_gid(0))
            layers_userns = writable.Userns(Path(pod_userns), pod_maps.host_uid(0), pod_maps.host_gid(0))
        await asyncio.to_thread(
            writable.mount, self.images.layers.snapshots.root, chain, self.layer_dir(record.id), rootfs, layers_userns
        )
        if volumes:  # undone with the rest by the teardown, which unmounts whatever is under the bundle
            layers_ns = Path(pod_userns) if pod_userns else None  # then over idmapped layers, as the root is
            sources = await asyncio.to_thread(
                image_volumes.mount, self.images.layers.snapshots.root, volumes, bundle, layers_ns
            )
            config = image_volumes.as_binds(config, sources)
        features = await self.handlers.features(sandbox.status.runtime_handler)
        if pod_userns and pod_maps:  # undone by the teardown (userns.remove_mounts)
            config = pb.ContainerConfig.FromString(config.SerializeToString())
            mapped = {v.index for v in volumes}  # image volumes: idmapped already, bound as they are
            reserved = [m["destination"] for m in default_mounts(privileged=False)] + list(sandbox.status.files)
            await asyncio.to_thread(
                functools.partial(
                    userns.prepare_mounts,
                    config,
                    bundle,
                    Path(pod_userns),
                    pod_maps,
                    mapped,
                    submounts_apart=not features.rbinds_in_userns,
                    reserved=reserved,
                )
            )
        image_doc = config_json(image)
        namespaces = dict(sandbox.status.namespaces)
        pid_modes = (
            pod.linux.security_context.namespace_options.pid,
            config.linux.security_context.namespace_options.pid,
        )
        if pb.NamespaceMode.NODE in pid_modes:
            pass  # the node's PID namespace
        elif pid_modes[0] == pb.NamespaceMode.POD and record.id != sandbox.id:
            namespaces["pid"] = f"/proc/{sandbox.status.infra_pid}/ns/pid"  # the pod's, held by its pause process
        else:
            namespaces["pid"] = ""  # a PID namespace of its own (or, for the pause container, the pod's new one)
        spec = build(
            SpecInputs(
                container=config,
                pod=pod,
                image_config=image_doc.get("config") or {},  # type: ignore[arg-type]
                rootfs=rootfs,
                namespaces=namespaces,
                cgroups_path=self.cgroups.spec_path(pod.linux.cgroup_parent, record.id),
                hostname=Path(sandbox.status.files["/etc/hostname"]).read_text().strip(),
                pod_files={k: Path(v) for k, v in sandbox.status.files.items()},
                oom_score_adj_floor=_own_oom_score_adj(),
                seccomp_root=Path(self.config().runtime.seccomp_profile_root),
                cdi_spec_dirs=tuple(map(Path, self.config().runtime.cdi_spec_dirs)),
                available_capabilities=current_capabilities(),
                nofile_ceiling=nofile_ceiling(),
                cgroup_namespace=self.cgroup_host.unified,
                hugetlb=self.cgroup_host.hugetlb,
                recursive_read_only=features.recursive_read_only,
                apparmor=self.apparmor,
            )
        )
        if self.apparmor is not None and spec["process"].get("apparmorProfile") == apparmor_default.NAME:
            await self.apparmor.ensure_loaded(apparmor_default.NAME, apparmor_default.PROFILE)
        if pod_maps is not None:
            if not features.locks_readonly_in_userns:
                userns.check_readonly_locked(config, spec, sandbox.status.runtime_handler)
            spec["linux"].update(userns.spec_fragment(pod_maps))
        (bundle / "config.json").write_text(json.dumps(spec))
        if restoring is not None:  # no process until StartContainer restores it
            await restore.unpack(self, record.id, restoring)
            return 0
        log_path = self.log_path(record)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return await conmon.create_container(
            binaries.resolve(self.config().runtime.conmon),
            self.runtime(sandbox.status.runtime_handler),
            cid=record.id,
            name=record.name,
            bundle=bundle,
            state_dir=self.state,
            log_path=log_path,
            terminal=config.tty,
            stdin=config.stdin,
            leave_stdin_open=not config.stdin_once,
        )

    # --- the pause (infra) container of pods sharing one PID namespace ----------------------------------

    async def start_infra(self, sandbox: SandboxRecord, pod: pb.PodSandboxConfig) -> int:
        """Run the pod's pause process in the pod's namespaces and a new PID namespace; returns its pid.

        It is not a CRI container: it has no record of its own and is not listed; it lives and dies with
        the pod, under the pod's id."""
        name = self.config().sandbox_image
        image = await self.images.find(name)
        if image is None:
            image = await self.images.pull(name, Credentials())
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="POD"),
            image=pb.ImageSpec(image=name),
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.RuntimeDefault),
                    no_new_privs=True,
                    capabilities=pb.Capability(drop_capabilities=["ALL"]),
                )
            ),
        )
        infra = ContainerRecord(
            sandbox.id, sandbox.id, sandbox.name, CONTAINER_CREATING, time.time_ns(), image.id, b"", ContainerStatus()
        )
        try:
            pid = await self._make(infra, config, pod, sandbox, image)
            await self.runtime(sandbox.status.runtime_handler).start(sandbox.id)
        except BaseException:
            await asyncio.shield(self.remove_infra(sandbox))
            raise
        log.info("pause container started", sandbox=sandbox.id, pid=pid, image=name)
        return pid

    async def stop_infra(self, sandbox: SandboxRecord) -> None:
        await send_signal(self.runtime(sandbox.status.runtime_handler), sandbox.id, signal.SIGKILL)
        await wait_for(self.conmon_paths(sandbox.id).exit_file, KILL_WAIT_SECONDS)

    async def remove_infra(self, sandbox: SandboxRecord) -> None:
        await self._teardown(sandbox.id, sandbox.status.runtime_handler)

    async def infra_running(self, sandbox: SandboxRecord) -> bool:
        state = await self.runtime(sandbox.status.runtime_handler).state(sandbox.id)
        return state is not None and state.get("status") == "running"


def _own_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0
