"""The OCI spec builder, rule by rule, against temp rootfs dirs and real files: no mocks."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument
from moorage.runtime import spec
from moorage.runtime.spec import rootfs as rootfs_mod
from moorage.runtime.spec import seccomp, security
from tests.fixtures.spec import SC, inputs, make_rootfs

Profile = pb.SecurityProfile.ProfileType


def build(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return spec.build(inputs(tmp_path, **kw))


# --- process.args ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "image", "expected"),
    [
        ((), (), {"Entrypoint": ["/ep"], "Cmd": ["c1"]}, ["/ep", "c1"]),
        ((), ("a1",), {"Entrypoint": ["/ep"], "Cmd": ["c1"]}, ["/ep", "a1"]),
        (("/cmd",), (), {"Entrypoint": ["/ep"], "Cmd": ["c1"]}, ["/cmd"]),
        (("/cmd",), ("a1", "a2"), {"Entrypoint": ["/ep"], "Cmd": ["c1"]}, ["/cmd", "a1", "a2"]),
        ((), (), {"Cmd": ["/bin/sh"]}, ["/bin/sh"]),
        ((), ("/bin/ls",), {"Entrypoint": None, "Cmd": ["/bin/sh"]}, ["/bin/ls"]),
    ],
)
def test_command_and_args_precedence(
    tmp_path: Path, command: tuple[str, ...], args: tuple[str, ...], image: dict[str, Any], expected: list[str]
) -> None:
    assert build(tmp_path, command=command, args=args, image_config=image)["process"]["args"] == expected


def test_no_command_anywhere_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no command specified"):
        build(tmp_path, command=(), image_config={"Env": ["A=1"]})


# --- env, cwd, terminal ---------------------------------------------------------------------------------------


def test_env_merges_image_then_cri_and_sets_hostname(tmp_path: Path) -> None:
    envs = [pb.KeyValue(key="B", value=b"cri"), pb.KeyValue(key="C", value=b"new=x")]
    s = build(tmp_path, image_config={"Env": ["A=1", "B=image", "PATH=/opt/bin"]}, envs=envs)
    assert s["process"]["env"] == ["HOSTNAME=pod", "A=1", "B=cri", "PATH=/opt/bin", "C=new=x"]


def test_env_gets_default_path(tmp_path: Path) -> None:
    env = build(tmp_path)["process"]["env"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in env
    assert env[0] == "HOSTNAME=pod"


@pytest.mark.parametrize(
    ("working_dir", "image", "expected"),
    [("/work", {"WorkingDir": "/img"}, "/work"), ("", {"WorkingDir": "/img"}, "/img"), ("", {}, "/")],
)
def test_cwd(tmp_path: Path, working_dir: str, image: dict[str, Any], expected: str) -> None:
    assert build(tmp_path, working_dir=working_dir, image_config=image)["process"]["cwd"] == expected


def test_relative_cwd_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        build(tmp_path, working_dir="rel")


def test_tty_and_rlimits(tmp_path: Path) -> None:
    s = build(tmp_path, tty=True)
    assert s["process"]["terminal"] is True
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}]
    capped = spec.build(replace(inputs(tmp_path), nofile_ceiling=20000))
    assert capped["process"]["rlimits"][0]["hard"] == 20000


# --- user ---------------------------------------------------------------------------------------------------


def user_of(tmp_path: Path, sc: pb.LinuxContainerSecurityContext | None = None, image_user: str = "") -> Any:
    return build(tmp_path, sc=sc, image_config={"User": image_user})["process"]["user"]


@pytest.mark.parametrize(
    ("image_user", "expected"),
    [
        ("", {"uid": 0, "gid": 0, "additionalGids": [0]}),
        ("app", {"uid": 1000, "gid": 1000, "additionalGids": [1000, 29, 44]}),
        ("1000", {"uid": 1000, "gid": 1000, "additionalGids": [1000, 29, 44]}),
        ("app:www-data", {"uid": 1000, "gid": 33, "additionalGids": [33, 29, 44]}),
        ("1000:7", {"uid": 1000, "gid": 7, "additionalGids": [7, 29, 44]}),
        ("4242", {"uid": 4242, "gid": 0, "additionalGids": [0]}),
    ],
)
def test_image_user_forms(tmp_path: Path, image_user: str, expected: dict[str, Any]) -> None:
    assert user_of(tmp_path, image_user=image_user) == expected


def test_run_as_user_and_group_override_the_image(tmp_path: Path) -> None:
    sc = SC(run_as_user=pb.Int64Value(value=33), run_as_group=pb.Int64Value(value=5), supplemental_groups=[9, 29])
    assert user_of(tmp_path, sc, image_user="app") == {"uid": 33, "gid": 5, "additionalGids": [5, 29, 9]}


def test_run_as_username(tmp_path: Path) -> None:
    assert user_of(tmp_path, SC(run_as_username="web"))["uid"] == 33


def test_strict_policy_ignores_etc_group(tmp_path: Path) -> None:
    sc = SC(
        run_as_username="app", supplemental_groups=[4000], supplemental_groups_policy=pb.SupplementalGroupsPolicy.Strict
    )
    assert user_of(tmp_path, sc) == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 4000]}


@pytest.mark.parametrize(
    ("sc", "image_user", "named"),
    [(SC(run_as_username="ghost"), "", "ghost"), (None, "nobody", "nobody"), (None, "app:nogroup", "nogroup")],
)
def test_unknown_names_are_invalid(
    tmp_path: Path, sc: pb.LinuxContainerSecurityContext | None, image_user: str, named: str
) -> None:
    with pytest.raises(InvalidArgument, match=named):
        user_of(tmp_path, sc, image_user=image_user)


def test_passwd_symlink_out_of_the_rootfs_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to(outside / "passwd")  # absolute: re-rooted at the rootfs, where it is absent
    (root / "etc/group").symlink_to("../../../../../../../outside/group")  # ".." stops at the rootfs
    with pytest.raises(InvalidArgument, match="evil"):
        user_of(tmp_path, image_user="evil")
    assert user_of(tmp_path, image_user="1000") == {"uid": 1000, "gid": 0, "additionalGids": [0]}


def test_passwd_symlink_inside_the_rootfs_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    make_rootfs(root)
    (root / "real").mkdir()
    (root / "etc/passwd").rename(root / "real/passwd")
    (root / "etc/passwd").symlink_to("/real/passwd")
    assert user_of(tmp_path, image_user="app")["uid"] == 1000


def test_passwd_symlink_loop_is_invalid(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidArgument, match="/etc/passwd"):
        user_of(tmp_path, image_user="app")


def test_secure_join_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    (root / "a/up").symlink_to("../../../..")
    assert rootfs_mod.secure_join(root, "/a/up/etc/passwd") == root.resolve() / "etc/passwd"
    assert rootfs_mod.secure_join(root, "../../x") == root.resolve() / "x"


# --- capabilities, privileged, paths --------------------------------------------------------------------------


def caps_of(tmp_path: Path, add: list[str], drop: list[str], ambient: list[str] | None = None) -> dict[str, Any]:
    capability = pb.Capability(add_capabilities=add, drop_capabilities=drop, add_ambient_capabilities=ambient or [])
    return dict(build(tmp_path, sc=SC(capabilities=capability))["process"]["capabilities"])


def test_default_capabilities(tmp_path: Path) -> None:
    caps = caps_of(tmp_path, [], [])
    assert caps["bounding"] == list(security.DEFAULT_CAPABILITIES)
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert "ambient" not in caps


def test_add_and_drop_with_and_without_prefix(tmp_path: Path) -> None:
    caps = caps_of(tmp_path, ["NET_ADMIN", "cap_sys_time"], ["CAP_CHOWN", "kill"])
    assert "CAP_NET_ADMIN" in caps["bounding"]
    assert "CAP_SYS_TIME" in caps["bounding"]
    assert "CAP_CHOWN" not in caps["bounding"]
    assert "CAP_KILL" not in caps["bounding"]


def test_drop_all_then_add(tmp_path: Path) -> None:
    assert caps_of(tmp_path, ["NET_BIND_SERVICE"], ["ALL"])["bounding"] == ["CAP_NET_BIND_SERVICE"]


def test_add_all_minus_drop(tmp_path: Path) -> None:
    caps = caps_of(tmp_path, ["ALL"], ["SYS_ADMIN"])
    assert len(caps["bounding"]) == len(security.ALL_CAPABILITIES) - 1
    assert "CAP_SYS_ADMIN" not in caps["bounding"]


def test_all_means_all_available(tmp_path: Path) -> None:
    available = ("CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN")
    sc = SC(capabilities=pb.Capability(add_capabilities=["ALL"]))
    assert spec.build(replace(inputs(tmp_path, sc=sc), available_capabilities=available))["process"]["capabilities"][
        "bounding"
    ] == list(available)
    privileged = spec.build(replace(inputs(tmp_path, sc=SC(privileged=True)), available_capabilities=available))
    assert privileged["process"]["capabilities"]["permitted"] == list(available)


def test_current_capabilities_reads_the_bounding_set(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapBnd:\t0000000000200001\n")
    assert security.current_capabilities(status) == ("CAP_CHOWN", "CAP_SYS_ADMIN")


def test_ambient_capabilities(tmp_path: Path) -> None:
    caps = caps_of(tmp_path, [], ["ALL"], ambient=["NET_BIND_SERVICE"])
    assert caps["ambient"] == caps["inheritable"] == caps["bounding"] == ["CAP_NET_BIND_SERVICE"]


def test_unknown_capability_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="CAP_FLY"):
        caps_of(tmp_path, ["CAP_FLY"], [])


def test_unprivileged_defaults(tmp_path: Path) -> None:
    s = build(tmp_path, sc=SC(no_new_privs=True, readonly_rootfs=True))
    assert s["linux"]["maskedPaths"] == list(security.DEFAULT_MASKED_PATHS)
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert s["linux"]["readonlyPaths"] == list(security.DEFAULT_READONLY_PATHS)
    assert s["process"]["noNewPrivileges"] is True
    assert s["root"] == {"path": str(tmp_path / "rootfs"), "readonly": True}
    assert {m["destination"]: m["options"][-1] for m in s["mounts"]}["/sys"] == "ro"
    assert s["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert "seccomp" not in s["linux"]  # unset profile = unconfined


def test_masked_and_readonly_path_overrides(tmp_path: Path) -> None:
    s = build(tmp_path, sc=SC(masked_paths=["/proc/x"], readonly_paths=["/proc/y"]))
    assert s["linux"]["maskedPaths"] == ["/proc/x"]
    assert s["linux"]["readonlyPaths"] == ["/proc/y"]


def test_privileged(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "pts").mkdir(parents=True)
    os.symlink("/proc/self/fd", dev / "fd")
    os.mknod(dev / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(dev / "pts" / "0", 0o620 | 0o020000, os.makedev(136, 0))
    sc = SC(privileged=True, seccomp=pb.SecurityProfile(profile_type=Profile.RuntimeDefault))
    s = spec.build(replace(inputs(tmp_path, sc=sc), host_dev=dev))
    assert s["process"]["capabilities"]["bounding"] == list(security.ALL_CAPABILITIES)
    assert s["linux"]["maskedPaths"] == []
    assert s["linux"]["readonlyPaths"] == []
    assert "seccomp" not in s["linux"]
    assert [(d["path"], d["type"], d["major"], d["minor"]) for d in s["linux"]["devices"]] == [("/dev/null", "c", 1, 3)]
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert {m["destination"]: m["options"][-1] for m in s["mounts"]}["/sys"] == "rw"


# --- mounts -------------------------------------------------------------------------------------------------


def test_mounts_defaults_pod_files_propagation_and_order(tmp_path: Path) -> None:
    (tmp_path / "vol/sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "vol")
    cri = [
        pb.Mount(container_path="/data/sub", host_path=str(tmp_path / "vol/sub"), readonly=True),
        pb.Mount(
            container_path="/data",
            host_path=str(tmp_path / "link"),
            propagation=pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
        ),
        pb.Mount(
            container_path="/shared",
            host_path=str(tmp_path / "vol"),
            propagation=pb.MountPropagation.PROPAGATION_BIDIRECTIONAL,
            selinux_relabel=True,
        ),
    ]
    s = build(tmp_path, mounts=cri)
    by_dest = {m["destination"]: m for m in s["mounts"]}
    dests = [m["destination"] for m in s["mounts"]]
    assert dests.index("/data") < dests.index("/data/sub")
    assert dests.index("/dev") < dests.index("/dev/pts") < dests.index("/sys/fs/cgroup")
    assert by_dest["/data/sub"]["options"] == ["rbind", "rprivate", "ro"]
    assert by_dest["/data"] == {
        "destination": "/data",
        "type": "bind",
        "source": str((tmp_path / "vol").resolve()),
        "options": ["rbind", "rslave", "rw"],
    }
    assert by_dest["/shared"]["options"] == ["rbind", "rshared", "rw"]
    assert by_dest["/sys/fs/cgroup"]["type"] == "cgroup"
    assert by_dest["/dev/shm"]["source"] == str(tmp_path / "shm")
    assert by_dest["/etc/hostname"]["options"] == ["rbind", "rprivate", "rw"]
    assert s["linux"]["rootfsPropagation"] == "rshared"
    assert {"/proc", "/dev/mqueue", "/dev/pts", "/sys"} <= set(by_dest)


def test_cri_mount_replaces_a_pod_file(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("")
    cri = [pb.Mount(container_path="/etc/hostname", host_path=str(tmp_path / "hosts"))]
    mounts = build(tmp_path, mounts=cri)["mounts"]
    assert [m["source"] for m in mounts if m["destination"] == "/etc/hostname"] == [str(tmp_path / "hosts")]


def test_pod_files_read_only_with_a_read_only_rootfs(tmp_path: Path) -> None:
    mounts = {m["destination"]: m for m in build(tmp_path, sc=SC(readonly_rootfs=True))["mounts"]}
    assert mounts["/etc/hostname"]["options"][-1] == "ro"
    assert mounts["/dev/shm"]["options"][-1] == "rw"


def test_missing_host_path_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="nowhere"):
        build(tmp_path, mounts=[pb.Mount(container_path="/d", host_path=str(tmp_path / "nowhere"))])


def test_recursive_read_only_adds_rro_when_the_runtime_has_it(tmp_path: Path) -> None:
    rro = pb.Mount(container_path="/d", host_path=str(tmp_path), readonly=True, recursive_read_only=True)
    with_rro = dataclasses.replace(inputs(tmp_path, mounts=[rro]), recursive_read_only=True)
    (mount,) = [m for m in spec.build(with_rro)["mounts"] if m["destination"] == "/d"]
    assert mount["options"] == ["rbind", "rprivate", "ro", "rro"]
    with pytest.raises(FailedPrecondition, match=r"mounts\[0\]: recursive_read_only: .* does not support"):
        build(tmp_path, mounts=[rro])


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (pb.Mount(readonly=False), "needs readonly"),
        (pb.Mount(readonly=True, propagation=pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER),
         "needs private propagation, not PROPAGATION_HOST_TO_CONTAINER"),
        (pb.Mount(readonly=True, propagation=pb.MountPropagation.PROPAGATION_BIDIRECTIONAL),
         "needs private propagation, not PROPAGATION_BIDIRECTIONAL"),
    ],
)  # fmt: skip
def test_recursive_read_only_must_be_read_only_and_private(tmp_path: Path, mount: pb.Mount, message: str) -> None:
    mount.MergeFrom(pb.Mount(container_path="/d", host_path=str(tmp_path), recursive_read_only=True))
    with pytest.raises(InvalidArgument, match=message):
        spec.build(dataclasses.replace(inputs(tmp_path, mounts=[mount]), recursive_read_only=True))


def test_mount_options_are_added_to_the_bind(tmp_path: Path) -> None:
    options = ["nosuid", "noexec", "nodev", "nosuid"]
    mount = pb.Mount(container_path="/d", host_path=str(tmp_path), readonly=True, mount_options=options)
    (oci,) = [m for m in build(tmp_path, mounts=[mount])["mounts"] if m["destination"] == "/d"]
    assert oci["options"] == ["rbind", "rprivate", "ro", "nosuid", "noexec", "nodev"]


@pytest.mark.parametrize("option", ["suid", "dev", "exec", "rw", "remount", "bind", "NOEXEC", "", "nodev,suid"])
def test_mount_options_beyond_kubernetes_bind_options_are_refused(tmp_path: Path, option: str) -> None:
    mounts = [
        pb.Mount(container_path="/ok", host_path=str(tmp_path)),
        pb.Mount(container_path="/d", host_path=str(tmp_path), mount_options=["nodev", option]),
    ]
    with pytest.raises(InvalidArgument) as info:
        build(tmp_path, mounts=mounts)
    assert info.value.message == (
        f"mounts[1].mount_options: {option!r} is not allowed on the mount at /d (allowed: noexec, nodev, nosuid)"
    )


# --- namespaces, hostname, cgroups, annotations, devices ---------------------------------------------------------


def test_linux_namespaces_hostname_and_annotations(tmp_path: Path) -> None:
    s = build(tmp_path, annotations={"a": "b"})
    assert s["ociVersion"] == "1.0.2-dev"
    assert s["linux"]["namespaces"] == [
        {"type": "mount"},
        {"type": "network", "path": "/run/ns/net"},
        {"type": "ipc", "path": "/run/ns/ipc"},
        {"type": "uts", "path": "/run/ns/uts"},
        {"type": "pid"},
    ]
    assert s["hostname"] == "pod"
    assert s["linux"]["cgroupsPath"] == "/kubepods/pod1/c1"
    assert s["annotations"]["a"] == "b"
    assert s["annotations"]["io.kubernetes.cri.container-type"] == "container"
    assert s["annotations"]["io.kubernetes.cri.container-name"] == "app"
    assert s["annotations"]["io.kubernetes.cri.sandbox-namespace"] == "prod"
    assert "sysctl" not in s["linux"]


def test_a_cgroup_namespace_on_cgroup_v2_unless_privileged(tmp_path: Path) -> None:
    v2 = dataclasses.replace(inputs(tmp_path), cgroup_namespace=True)
    assert {"type": "cgroup"} in spec.build(v2)["linux"]["namespaces"]
    privileged = dataclasses.replace(inputs(tmp_path, sc=SC(privileged=True)), cgroup_namespace=True)
    assert all(ns["type"] != "cgroup" for ns in spec.build(privileged)["linux"]["namespaces"])
    assert all(ns["type"] != "cgroup" for ns in build(tmp_path)["linux"]["namespaces"])  # v1: the host's


def test_no_hostname_with_the_host_uts_namespace(tmp_path: Path) -> None:
    assert "hostname" not in spec.build(replace(inputs(tmp_path), namespaces={}))


def test_cri_devices(tmp_path: Path) -> None:
    node = tmp_path / "fuse"
    os.mknod(node, 0o600 | 0o020000, os.makedev(10, 229))
    s = build(tmp_path, devices=[pb.Device(container_path="/dev/fuse", host_path=str(node), permissions="rw")])
    assert s["linux"]["devices"] == [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600, "uid": 0, "gid": 0}
    ]
    assert {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"} in s["linux"]["resources"]["devices"]
    with pytest.raises(InvalidArgument, match="nodev"):
        build(tmp_path, devices=[pb.Device(container_path="/dev/x", host_path=str(tmp_path / "nodev"))])


# --- oom_score_adj and resources ----------------------------------------------------------------------------------


def test_oom_score_adj_is_clamped_to_the_floor(tmp_path: Path) -> None:
    assert build(tmp_path, resources=pb.LinuxContainerResources(oom_score_adj=-998))["process"]["oomScoreAdj"] == -500
    assert build(tmp_path, resources=pb.LinuxContainerResources(oom_score_adj=1000))["process"]["oomScoreAdj"] == 1000


def test_resources_mapping(tmp_path: Path) -> None:
    r = pb.LinuxContainerResources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        memory_limit_in_bytes=1 << 28,
        memory_swap_limit_in_bytes=1 << 29,
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=1 << 21)],
        unified={"memory.high": "1000000"},
    )
    res = build(tmp_path, resources=r)["linux"]["resources"]
    assert res["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"}
    assert res["memory"] == {"limit": 1 << 28, "swap": 1 << 29}
    assert res["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 21}]
    assert res["unified"] == {"memory.high": "1000000"}


def test_unset_resources_are_left_out(tmp_path: Path) -> None:
    assert set(build(tmp_path)["linux"]["resources"]) == {"devices"}


# --- seccomp ------------------------------------------------------------------------------------------------------


def seccomp_of(tmp_path: Path, sc: pb.LinuxContainerSecurityContext) -> Any:
    return build(tmp_path, sc=sc)["linux"].get("seccomp")


def allowed(profile: dict[str, Any]) -> set[str]:
    return {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r for n in r["names"]}


def test_runtime_default_profile(tmp_path: Path) -> None:
    profile = seccomp_of(tmp_path, SC(seccomp=pb.SecurityProfile(profile_type=Profile.RuntimeDefault)))
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    names = allowed(profile)
    assert {"execve", "read", "openat", "wait4", "getdents64"} <= names
    assert not {"mount", "unshare", "ptrace", "kexec_load", "init_module", "clone"} & names
    assert seccomp_of(tmp_path, SC(seccomp_profile_path="runtime/default")) == profile


def test_runtime_default_opens_up_with_capabilities(tmp_path: Path) -> None:
    caps = pb.Capability(add_capabilities=["SYS_ADMIN", "SYS_PTRACE"])
    sc = SC(capabilities=caps, seccomp=pb.SecurityProfile(profile_type=Profile.RuntimeDefault))
    names = allowed(seccomp_of(tmp_path, sc))
    assert {"mount", "unshare", "clone", "clone3", "ptrace", "process_vm_readv"} <= names


def test_default_profile_architectures() -> None:
    assert seccomp.default_profile([], "x86_64")["architectures"][0] == "SCMP_ARCH_X86_64"
    assert seccomp.default_profile([], "aarch64")["architectures"][0] == "SCMP_ARCH_AARCH64"


@pytest.mark.parametrize(
    "sc",
    [SC(), SC(seccomp=pb.SecurityProfile(profile_type=Profile.Unconfined)), SC(seccomp_profile_path="unconfined")],
)
def test_unconfined(tmp_path: Path, sc: pb.LinuxContainerSecurityContext) -> None:
    assert seccomp_of(tmp_path, sc) is None


def test_localhost_profiles(tmp_path: Path) -> None:
    root = tmp_path / "seccomp"
    root.mkdir()
    doc = {"defaultAction": "SCMP_ACT_LOG", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    (root / "p.json").write_text(json.dumps(doc))
    relative = SC(seccomp=pb.SecurityProfile(profile_type=Profile.Localhost, localhost_ref="p.json"))
    absolute = SC(seccomp=pb.SecurityProfile(profile_type=Profile.Localhost, localhost_ref=str(root / "p.json")))
    legacy = SC(seccomp_profile_path=f"localhost/{root / 'p.json'}")
    for sc in (relative, absolute, legacy):
        assert seccomp_of(tmp_path, sc) == doc


def test_localhost_profile_missing_or_invalid(tmp_path: Path) -> None:
    (tmp_path / "seccomp").mkdir()
    (tmp_path / "seccomp/bad.json").write_text("{not json")
    for ref, message in (("missing.json", "missing.json"), ("bad.json", "invalid JSON")):
        sc = SC(seccomp=pb.SecurityProfile(profile_type=Profile.Localhost, localhost_ref=ref))
        with pytest.raises(InvalidArgument, match=message):
            seccomp_of(tmp_path, sc)


def test_unknown_legacy_seccomp_path_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="seccomp_profile_path"):
        seccomp_of(tmp_path, SC(seccomp_profile_path="strange"))


def test_oom_clamp_is_logged_once(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        build(tmp_path, resources=pb.LinuxContainerResources(oom_score_adj=-998))
    clamps = [e for e in logs if e["log_level"] == "warning"]
    assert len(clamps) == 1
    assert clamps[0]["requested"] == -998
    assert clamps[0]["container"] == "app"
