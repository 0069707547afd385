"""Which AppArmor profile a container gets (the pure selection), the default profile's text as apparmor_parser
compiles it, and reading the kernel's AppArmor files (from temp copies)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument
from moorage.node import apparmor as node_apparmor
from moorage.node import apparmor_default
from moorage.runtime.spec import apparmor

SC = pb.LinuxContainerSecurityContext
Profile = pb.SecurityProfile.ProfileType


@dataclass
class Node:
    profiles: frozenset[str] | None = frozenset({"deny-write", "audit-write"})

    def loaded(self, profile: str) -> bool | None:
        return None if self.profiles is None else profile in self.profiles


def localhost(ref: str) -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=Profile.Localhost, localhost_ref=ref)


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        (SC(), "moorage-default"),  # nothing asked: the default, as in containerd and CRI-O
        (SC(apparmor=pb.SecurityProfile(profile_type=Profile.RuntimeDefault)), "moorage-default"),
        (SC(apparmor=pb.SecurityProfile(profile_type=Profile.Unconfined)), None),
        (SC(apparmor=localhost("deny-write")), "deny-write"),
        (SC(apparmor=localhost("localhost/deny-write")), "deny-write"),  # critest's refs carry the prefix
        (SC(apparmor_profile="runtime/default"), "moorage-default"),
        (SC(apparmor_profile="unconfined"), None),
        (SC(apparmor_profile="localhost/audit-write"), "audit-write"),
        # the structured field wins over the deprecated string, whichever way round
        (SC(apparmor_profile="localhost/nowhere", apparmor=localhost("deny-write")), "deny-write"),
        (
            SC(apparmor_profile="localhost/deny-write", apparmor=pb.SecurityProfile(profile_type=Profile.Unconfined)),
            None,
        ),
        # privileged: the default becomes unconfined, a named profile still applies
        (SC(privileged=True), None),
        (SC(privileged=True, apparmor_profile="localhost/deny-write"), "deny-write"),
    ],
)
def test_the_profile_a_container_runs_under(security: pb.LinuxContainerSecurityContext, expected: str | None) -> None:
    assert apparmor.select(security, Node()) == expected


def test_an_unloaded_localhost_profile_is_refused_naming_it_and_the_field() -> None:
    with pytest.raises(FailedPrecondition, match=r"apparmor.localhost_ref: AppArmor profile 'nowhere' is not loaded"):
        apparmor.select(SC(apparmor=localhost("localhost/nowhere"), apparmor_profile="localhost/deny-write"), Node())
    with pytest.raises(FailedPrecondition, match=r"^apparmor_profile: AppArmor profile 'nowhere' is not loaded"):
        apparmor.select(SC(apparmor_profile="localhost/nowhere"), Node())


def test_where_loaded_profiles_cannot_be_read_the_runtime_is_left_to_judge() -> None:
    assert apparmor.select(SC(apparmor=localhost("anything")), Node(profiles=None)) == "anything"


def test_with_apparmor_off_the_default_is_unconfined_and_a_named_profile_an_error() -> None:
    assert apparmor.select(SC(), None) is None
    assert apparmor.select(SC(apparmor_profile="runtime/default"), None) is None
    with pytest.raises(FailedPrecondition, match=r"'deny-write' asked for, but AppArmor is off on this node"):
        apparmor.select(SC(apparmor=localhost("deny-write")), None)


@pytest.mark.parametrize(
    ("security", "message"),
    [
        (SC(apparmor_profile="docker-default"), r"apparmor_profile: unknown profile 'docker-default'"),
        (SC(apparmor_profile="localhost/"), r"apparmor_profile: unknown profile 'localhost/'"),
        (SC(apparmor=localhost("")), r"apparmor.localhost_ref: a Localhost AppArmor profile needs a profile name"),
    ],
)
def test_malformed_requests_are_invalid(security: pb.LinuxContainerSecurityContext, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        apparmor.select(security, Node())


@pytest.mark.skipif(shutil.which("apparmor_parser") is None, reason="apparmor_parser is not installed")
def test_the_default_profile_compiles(tmp_path: Path) -> None:
    # -Q: compile only, nothing is loaded (this host's kernel may have AppArmor off); -K: no cache
    source = tmp_path / "profile"
    source.write_text(apparmor_default.PROFILE)
    compiled = subprocess.run(["apparmor_parser", "-QK", str(source)], capture_output=True, text=True, check=False)
    assert compiled.returncode == 0, compiled.stderr
    names = subprocess.run(["apparmor_parser", "--names", str(source)], capture_output=True, text=True, check=True)
    assert names.stdout.split() == [apparmor_default.NAME]


def test_enabled_reads_the_modules_parameter(tmp_path: Path) -> None:
    flag = tmp_path / "enabled"
    assert not node_apparmor.enabled(flag)  # no AppArmor in the kernel
    flag.write_text("N\n")
    assert not node_apparmor.enabled(flag)
    flag.write_text("Y\n")
    assert node_apparmor.enabled(flag)


def test_loaded_profiles_with_their_modes(tmp_path: Path) -> None:
    assert node_apparmor.loaded_profiles(tmp_path) is None  # securityfs not mounted
    (tmp_path / "profiles").write_text("moorage-default (enforce)\nwith space (complain)\n/usr/bin/man (enforce)\n")
    assert node_apparmor.loaded_profiles(tmp_path) == {
        "moorage-default": "enforce",
        "with space": "complain",
        "/usr/bin/man": "enforce",
    }
    assert node_apparmor.AppArmor(tmp_path).loaded("with space") is True
    assert node_apparmor.AppArmor(tmp_path).loaded("with") is False
