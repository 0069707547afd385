"""Validating a pod's user namespace as the kubelet and critest expect, and what the OCI spec gets from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument
from moorage.node.namespaces import IdMap, UserNamespace
from moorage.runtime import userns
from moorage.state.models import CREATING, NOTREADY, READY, SandboxRecord, SandboxStatus


def pod(options: pb.UserNamespace | None, **modes: pb.NamespaceMode.ValueType) -> pb.PodSandboxConfig:
    config = pb.PodSandboxConfig()
    ns = config.linux.security_context.namespace_options
    for name, mode in modes.items():
        setattr(ns, name, mode)
    if options is not None:
        ns.userns_options.CopyFrom(options)
    return config


def mapping(container_id: int = 0, host_id: int = 1000, length: int = 100000) -> pb.IDMapping:
    return pb.IDMapping(container_id=container_id, host_id=host_id, length=length)


def pod_mode(uids: list[pb.IDMapping], gids: list[pb.IDMapping] | None = None) -> pb.UserNamespace:
    return pb.UserNamespace(mode=pb.NamespaceMode.POD, uids=uids, gids=uids if gids is None else gids)


def test_no_options_and_mode_node_are_the_nodes_user_namespace() -> None:
    assert userns.validate(pod(None)) is None
    assert userns.validate(pod(pb.UserNamespace(mode=pb.NamespaceMode.NODE))) is None


def test_mode_pod_gives_its_single_ranges() -> None:
    maps = userns.validate(pod(pod_mode([mapping()], [mapping(host_id=5000, length=65536)])))
    assert maps == UserNamespace(IdMap(0, 1000, 100000), IdMap(0, 5000, 65536))
    assert (maps.host_uid(0), maps.host_gid(0), maps.host_uid(10)) == (1000, 5000, 1010)
    assert userns.oci_mappings(maps) == {
        "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 100000}],
        "gidMappings": [{"containerID": 0, "hostID": 5000, "size": 65536}],
    }


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (pb.UserNamespace(mode=pb.NamespaceMode.CONTAINER), "userns_options.mode: CONTAINER"),
        (pb.UserNamespace(mode=pb.NamespaceMode.TARGET), "userns_options.mode: TARGET"),
        (pod_mode([mapping(), mapping(host_id=2000)]), "userns_options.uids: exactly one"),
        (pod_mode([mapping(container_id=1)]), "userns_options.uids[0].container_id"),
        (pod_mode([mapping()], []), "userns_options.gids: exactly one"),
        (pod_mode([mapping(length=0)]), "userns_options.uids[0].length"),
        (pod_mode([mapping(length=65535)]), "userns_options.uids[0].length: 65535 ids"),
        (pod_mode([mapping(host_id=0)]), "userns_options.uids[0].host_id: 0 is the node's root"),
        (pod_mode([mapping()], [mapping(host_id=0)]), "userns_options.gids[0].host_id"),
        (pod_mode([mapping(host_id=(1 << 32) - 10, length=65536)]), "userns_options.uids[0]: host ids"),
        (pod_mode([mapping(host_id=(1 << 32) - 65536, length=65536)]), "do not stay inside 32-bit ids"),
    ],
)
def test_what_the_kubelet_never_sends_is_refused_naming_the_field(options: pb.UserNamespace, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]")):
        userns.validate(pod(options))


@pytest.mark.parametrize("shared", ["network", "pid", "ipc"])
def test_a_pod_sharing_a_node_namespace_cannot_have_one(shared: str) -> None:
    with pytest.raises(InvalidArgument, match=f"node's {shared} namespace"):
        userns.validate(pod(pod_mode([mapping()]), **{shared: pb.NamespaceMode.NODE}))


def test_a_privileged_pod_cannot_have_one() -> None:
    config = pod(pod_mode([mapping()]))
    config.linux.security_context.privileged = True
    with pytest.raises(InvalidArgument, match="privileged"):
        userns.validate(config)


def test_a_mounts_mappings_are_the_pods_or_it_is_refused() -> None:
    pod_maps = UserNamespace(IdMap(0, 1000, 100000), IdMap(0, 7, 100000))
    plain = pb.Mount(container_path="/v", host_path="/tmp")
    assert userns.mount_maps(plain, 0, pod_maps) is False
    mapped = pb.Mount(container_path="/v", uidMappings=[mapping()], gidMappings=[mapping(host_id=7)])
    assert userns.mount_maps(mapped, 2, pod_maps) is True
    with pytest.raises(InvalidArgument, match=r"config.mounts\[3\].gidMappings: none differ"):
        userns.mount_maps(pb.Mount(container_path="/v", uidMappings=[mapping()]), 3, pod_maps)
    other = pb.Mount(container_path="/v", uidMappings=[mapping(host_id=5000)], gidMappings=[mapping(host_id=7)])
    with pytest.raises(InvalidArgument, match=r"config.mounts\[1\].uidMappings: 0:5000:100000 differ from the pod's"):
        userns.mount_maps(other, 1, pod_maps)
    config = pb.ContainerConfig(mounts=[plain, mapped, other])
    with pytest.raises(InvalidArgument, match=r"config.mounts\[2\].uidMappings"):
        userns.check_mounts(config, pod_maps)


def running(state: str, options: pb.UserNamespace | None) -> SandboxRecord:
    config = pod(options).SerializeToString()
    return SandboxRecord(f"pod-{state}", "name", state, 0, config, SandboxStatus())


def test_a_pod_on_host_ids_of_another_running_pod_is_refused() -> None:
    """Uid or gid ranges, against pods not stopped and RunPodSandboxes storing theirs; a stopped pod's range is
    free (the kubelet's next sandbox of the pod takes it)."""
    maps = UserNamespace(IdMap(0, 100000, 65536), IdMap(0, 300000, 65536))
    pods = [
        running(NOTREADY, pod_mode([mapping(host_id=100000)])),
        running(READY, None),
        running(READY, pod_mode([mapping(host_id=200000, length=65536)])),
    ]
    near = UserNamespace(IdMap(0, 400000, 65536), IdMap(0, 365535, 65536))
    with (
        userns.claim(maps, pods),
        userns.claim(None, pods),
        pytest.raises(FailedPrecondition, match="a pod sandbox being run"),
        userns.claim(near, pods),
    ):
        pass
    for state in (READY, CREATING):
        other = running(state, pod_mode([mapping(host_id=500000)], [mapping(host_id=365535, length=65536)]))
        match = rf"userns_options.gids\[0\]: .* pod sandbox pod-{state}"
        with pytest.raises(FailedPrecondition, match=match), userns.claim(maps, [*pods, other]):
            pass
    with userns.claim(maps, pods):  # released: claimable again
        pass


def test_a_directory_others_cannot_search_is_named(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    (closed / "inside").mkdir(parents=True)
    tmp_path.chmod(0o711)
    closed.chmod(0o700)
    with pytest.raises(FailedPrecondition, match=str(closed)):
        userns.check_reachable(closed / "inside" / "rootfs")
    closed.chmod(0o711)
    userns.check_reachable(Path("/usr/lib/os-release"))  # /, /usr and /usr/lib are 0755


def test_a_container_of_such_a_pod_cannot_have_the_nodes_pid_namespace() -> None:
    maps = UserNamespace(IdMap(0, 1000, 100000), IdMap(0, 1000, 100000))
    config = pb.ContainerConfig()
    for mode in (pb.NamespaceMode.POD, pb.NamespaceMode.CONTAINER):
        config.linux.security_context.namespace_options.pid = mode
        userns.check_container(config, maps)
    config.linux.security_context.namespace_options.pid = pb.NamespaceMode.NODE
    with pytest.raises(InvalidArgument, match=r"config.linux.security_context.namespace_options.pid: NODE"):
        userns.check_container(config, maps)
