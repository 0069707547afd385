"""The spec builder's output is accepted and enforced by the real OCI runtimes (runc and crun).

Each test builds a busybox rootfs in a temp dir, writes config.json from :func:`moorage.runtime.spec.build` and runs
``<runtime> --root <tmp> run`` in the foreground: RuntimeDefault seccomp, a named user, a read-only rootfs and a
pod file bind must all work together.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.cri import pb
from moorage.node import cgroupinfo
from moorage.runtime import spec
from moorage.runtime.containers.handlers import cgroup_compatible
from tests.fixtures import cgroups

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="running containers needs root"),
]

APPLETS = ("sh", "id", "cat", "ls", "sleep", "ps", "touch", "echo", "grep")


def make_rootfs(root: Path) -> None:
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for name in APPLETS:
        (root / "bin" / name).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    (root / "etc/hostname").write_text("")


def crun_without_cgroup2(crun: str, tmp: Path) -> str:
    """crun 1.8 refuses a hybrid host whose cgroup2 mount holds a controller ("cgroups in hybrid mode not
    supported"); this node's holds hugetlb. Run it the way the daemon does, through a wrapper without that mount."""
    return cgroup_compatible(crun, cgroupinfo.detect(), tmp / "crun-v1")


@pytest.fixture(params=["runc", "crun"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    binary = shutil.which(str(request.param))
    if binary is None:
        pytest.skip(f"{request.param} is not installed")
    return crun_without_cgroup2(binary, tmp_path) if request.param == "crun" else binary


@pytest.fixture
def cgroup_name() -> Iterator[str]:
    name = f"moorage-spec-test-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        cgroups.remove(name)


def run(runtime: str, bundle: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """``<runtime> run`` in the foreground, then ``delete --force`` whatever happened."""
    cid = f"spec-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run(
            [runtime, "--root", str(state), "run", "--bundle", str(bundle), cid],
            capture_output=True,
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        subprocess.run([runtime, "--root", str(state), "delete", "--force", cid], capture_output=True, check=False)


def spec_inputs(container: pb.ContainerConfig, rootfs: Path, cgroup_name: str, tmp_path: Path) -> spec.SpecInputs:
    hostname_file = tmp_path / "hostname"
    hostname_file.write_text("spec-test-pod\n")
    return spec.SpecInputs(
        container=container,
        pod=pb.PodSandboxConfig(hostname="spec-test-pod"),
        image_config={"Env": ["PATH=/bin"]},
        rootfs=rootfs,
        namespaces={"pid": "", "ipc": "", "uts": "", "network": ""},
        cgroups_path=f"/{cgroup_name}",
        hostname="spec-test-pod",
        pod_files={"/etc/hostname": hostname_file},
        oom_score_adj_floor=0,
        seccomp_root=tmp_path,
        nofile_ceiling=spec.nofile_ceiling(),
        available_capabilities=spec.current_capabilities(),
    )


def test_runtime_runs_the_built_spec(runtime: str, cgroup_name: str, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    make_rootfs(rootfs)
    state = tmp_path / "state"
    state.mkdir()

    container = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c"),
        command=[
            "sh",
            "-c",
            "id -u; cat /etc/hostname; touch /x 2>/dev/null || echo ro; ps >/dev/null && echo ps; "
            "ls / >/dev/null && sleep 0 && grep ^Seccomp: /proc/self/status",
        ],
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                run_as_username="app",
                readonly_rootfs=True,
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.RuntimeDefault),
            ),
        ),
    )
    config = spec.build(spec_inputs(container, rootfs, cgroup_name, tmp_path))
    assert "seccomp" in config["linux"]
    (bundle / "config.json").write_text(json.dumps(config))

    result = run(runtime, bundle, state)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1000", "spec-test-pod", "ro", "ps", "Seccomp:", "2"], result.stderr


def test_runtime_default_with_all_capabilities_loads(runtime: str, cgroup_name: str, tmp_path: Path) -> None:
    """Every capability-gated rule of the default profile at once (some syscalls appear in several rules)."""
    bundle = tmp_path / "bundle"
    make_rootfs(bundle / "rootfs")
    state = tmp_path / "state"
    state.mkdir()
    container = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c"),
        command=["sh", "-c", "id -u && grep ^Seccomp: /proc/self/status"],
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                capabilities=pb.Capability(add_capabilities=["ALL"]),
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.RuntimeDefault),
            ),
        ),
    )
    config = spec.build(spec_inputs(container, bundle / "rootfs", cgroup_name, tmp_path))
    (bundle / "config.json").write_text(json.dumps(config))
    result = run(runtime, bundle, state)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "Seccomp:", "2"], result.stderr
