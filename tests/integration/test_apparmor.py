"""AppArmor profiles on real containers, on runc and crun.

Where the kernel enforces AppArmor (``make test-cgroupv2``'s guest boots Debian's kernel with it on; this host's
kernel has it off), the ``apparmor``-marked tests load profiles of their own with apparmor_parser and watch what
a container may do under each: Moorage's default profile, Unconfined, a Localhost profile that denies writes, a
complain-mode one that logs and allows, one never loaded. Where AppArmor is off, the other tests check that the
default means unconfined and a named profile is refused.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from moorage.node import apparmor as node_apparmor
from moorage.node import apparmor_default
from tests.fixtures.pods import Pod, log_lines
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration
ENABLED = node_apparmor.enabled()
requires_apparmor = pytest.mark.skipif(
    not ENABLED, reason="the kernel has AppArmor off (make test-cgroupv2 runs these in a guest)"
)
Profile = pb.SecurityProfile.ProfileType

# As root with CAP_SYS_ADMIN and without the read-only /proc/sys the runtime would make, so only AppArmor stands
# between the container and a write to a (UTS-namespaced, harmless) sysctl or a new mount.
PROBE = (
    "echo moorage > /proc/sys/kernel/domainname && echo wrote-sysctl; "
    "mkdir -p /tmp/probe && mount -t tmpfs probe /tmp/probe && echo mounted; "
    "cat /proc/self/attr/current"
)


def security(**profile: object) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=0),
            capabilities=pb.Capability(add_capabilities=["SYS_ADMIN"]),
            readonly_paths=["/proc/bus"],
            **profile,  # type: ignore[arg-type]
        )
    )


def stdout_of(pod: Pod, container_id: str) -> tuple[int, list[str]]:
    st = pod.wait_exit(container_id, seconds=60)
    return st.exit_code, [text for stream, _, text in log_lines(st.log_path) if stream == "stdout"]


def apparmor_info(pod: Pod) -> object:
    """What Status (verbose, as ``moorage info`` and ``crictl info`` ask) says of AppArmor."""
    with pod.node.client() as client:
        return json.loads(client.runtime.Status(pb.StatusRequest(verbose=True)).info["apparmor"])


@pytest.fixture(params=["runc", "crun"])
def pod(node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path, request: pytest.FixtureRequest
        ) -> Iterator[Pod]:  # fmt: skip
    p = Pod(node, busybox.name, cgroup_parent, tmp_path, handler=str(request.param))
    yield p
    with node.client() as client:
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)


class Profiles:
    """Profiles the test loads into the kernel, each under a name of its own, unloaded at the end."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def load(self, body: str, flags: str = "attach_disconnected") -> str:
        name = f"moorage-test-{secrets.token_hex(4)}"
        self.replace(name, f"profile {name} flags=({flags}) {{\n{body}\n}}\n")
        self.loaded.append(name)
        return name

    @staticmethod
    def replace(name: str, text: str) -> None:
        done = subprocess.run(["apparmor_parser", "-rK"], input=text, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"loading {name}: {done.stderr}"

    def unload_all(self) -> None:
        for name in self.loaded:
            (node_apparmor.SECURITYFS / ".remove").write_text(name)


@pytest.fixture
def profiles() -> Iterator[Profiles]:
    if shutil.which("apparmor_parser") is None:
        pytest.fail("apparmor_parser is missing: `make deps` installs Debian's apparmor package")
    p = Profiles()
    yield p
    p.unload_all()


@pytest.mark.apparmor
@requires_apparmor
def test_the_default_profile_denies_what_unconfined_allows(pod: Pod, profiles: Profiles) -> None:
    # A stale moorage-default that allows everything (as an older Moorage's might): the daemon's first use
    # replaces it with its own text.
    profiles.replace(
        apparmor_default.NAME, f"profile {apparmor_default.NAME} flags=(attach_disconnected) {{ file, mount, }}\n"
    )
    unconfined = pod.run("free", "sh", "-c", PROBE, linux=security(apparmor_profile="unconfined"))
    assert stdout_of(pod, unconfined) == (0, ["wrote-sysctl", "mounted", "unconfined"])
    for name, request in {
        "asked": security(apparmor=pb.SecurityProfile(profile_type=Profile.RuntimeDefault)),
        "unasked": security(),  # nothing asked: the default all the same
    }.items():
        code, lines = stdout_of(pod, pod.run(name, "sh", "-c", PROBE, linux=request))
        assert (code, lines) == (0, [f"{apparmor_default.NAME} (enforce)"]), name
    assert apparmor_info(pod) == {"enabled": True, "defaultProfile": "moorage-default", "defaultProfileMode": "enforce"}


@pytest.mark.apparmor
@requires_apparmor
def test_an_exec_runs_under_the_containers_profile(pod: Pod, profiles: Profiles) -> None:
    writable = profiles.load("  file,\n  signal,\n  deny /tmp/** w,")
    container_id = pod.run(
        "sleeper", "sleep", "1000",
        linux=security(apparmor=pb.SecurityProfile(profile_type=Profile.Localhost, localhost_ref=writable)),
    )  # fmt: skip
    with pod.node.client() as client:
        script = "cat /proc/self/attr/current; touch /tmp/x"
        request = pb.ExecSyncRequest(container_id=container_id, cmd=["sh", "-c", script], timeout=30)
        done = client.runtime.ExecSync(request, timeout=60)
    assert done.stdout.decode().splitlines() == [f"{writable} (enforce)"]
    assert done.exit_code != 0
    assert b"Permission denied" in done.stderr


@pytest.mark.apparmor
@requires_apparmor
def test_a_localhost_profile_is_enforced_and_a_complain_mode_one_logs_and_allows(pod: Pod, profiles: Profiles) -> None:
    deny = profiles.load("  file,\n  deny /tmp/** w,")
    complain = profiles.load("  /** rix,", flags="attach_disconnected,complain")
    touch = ("sh", "-c", "touch /tmp/probe && echo touched")
    for ref in (deny, f"localhost/{deny}"):  # the kubelet's ref is the bare name, critest's has the prefix
        localhost = pb.SecurityProfile(profile_type=Profile.Localhost, localhost_ref=ref)
        code, lines = stdout_of(pod, pod.run(f"denied-{len(ref)}", *touch, linux=security(apparmor=localhost)))
        assert code != 0, ref
        assert lines == [], ref
    code, lines = stdout_of(pod, pod.run("legacy", *touch, linux=security(apparmor_profile=f"localhost/{deny}")))
    assert code != 0
    assert lines == []
    assert stdout_of(pod, pod.run("complain", *touch, linux=security(apparmor_profile=f"localhost/{complain}"))) == (
        0, ["touched"],
    )  # fmt: skip
    kernel_log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    assert any('apparmor="ALLOWED"' in line and f'profile="{complain}"' in line for line in kernel_log.splitlines())


@pytest.mark.apparmor
@requires_apparmor
def test_a_profile_never_loaded_fails_the_create_naming_it(pod: Pod) -> None:
    name = f"moorage-test-missing-{secrets.token_hex(4)}"
    localhost = pb.SecurityProfile(profile_type=Profile.Localhost, localhost_ref=name)
    with pytest.raises(grpc.RpcError) as failure:
        pod.create("missing", "true", linux=security(apparmor=localhost))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.value.details() == (
        f"apparmor.localhost_ref: AppArmor profile {name!r} is not loaded on this node "
        "(load it with apparmor_parser first)"
    )
    with pod.node.client() as client:
        assert not client.runtime.ListContainers(pb.ListContainersRequest()).containers  # nothing half-made


@pytest.mark.skipif(ENABLED, reason="the kernel has AppArmor on: the apparmor-marked tests cover it")
def test_with_apparmor_off_the_default_is_unconfined_and_a_named_profile_refused(pod: Pod) -> None:
    container_id = pod.run("default", "true")
    assert stdout_of(pod, container_id) == (0, [])
    spec = json.loads((pod.node.state / "bundles" / container_id / "config.json").read_text())
    assert "apparmorProfile" not in spec["process"]
    assert apparmor_info(pod) == {"enabled": False, "defaultProfile": "moorage-default", "defaultProfileMode": None}
    localhost = pb.SecurityProfile(profile_type=Profile.Localhost, localhost_ref="some-profile")
    with pytest.raises(grpc.RpcError) as failure:
        pod.create("named", "true", linux=security(apparmor=localhost))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'some-profile' asked for, but AppArmor is off on this node" in (failure.value.details() or "")
