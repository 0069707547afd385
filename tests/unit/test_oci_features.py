"""Reading an OCI runtime's ``features`` output and the kernel release into what moorage reports and accepts."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from moorage.runtime.containers.oci_features import (
    OciFeatures,
    kernel_has_mount_setattr,
    known_without_features,
    parse,
    probe,
)

RUNC_1_1 = json.dumps({"ociVersionMin": "1.0.0", "mountOptions": ["bind", "ro", "rro", "rrw", "nosuid"]}).encode()


def test_rro_needs_the_option_and_a_kernel_with_mount_setattr() -> None:
    assert parse(RUNC_1_1, "6.1.0-18-amd64").recursive_read_only
    assert "nosuid" in parse(RUNC_1_1, "6.1.0-18-amd64").mount_options
    assert not parse(RUNC_1_1, "5.10.0-28-amd64").recursive_read_only
    without = json.dumps({"mountOptions": ["bind", "ro"]}).encode()
    assert not parse(without, "6.1.0").recursive_read_only


@pytest.mark.parametrize("output", [b"", b"unknown command features", b"[]", b'{"mountOptions": "rro"}', b"{}"])
def test_anything_but_the_oci_document_means_no_optional_features(output: bytes) -> None:
    assert parse(output, "6.1.0") == OciFeatures(kernel_mount_setattr=True)
    assert not parse(output, "6.1.0").recursive_read_only


@pytest.mark.parametrize(
    ("release", "has"),
    [("5.12.0", True), ("5.11.22-foo", False), ("6.1.0-18-amd64", True), ("4.19.0", False), ("garbage", False)],
)
def test_kernel_release(release: str, has: bool) -> None:
    assert kernel_has_mount_setattr(release) is has


@pytest.mark.parametrize(
    ("version", "options"),
    [
        (b"crun version 1.8.1\ncommit: f8a096be\n", {"rro"}),
        (b"crun version 1.14\n", {"rro"}),
        (b"crun version 1.7.2\n", set()),
        (b"runc version 1.0.0\n", set()),
        (b"", set()),
    ],
)
def test_a_crun_without_the_features_command_is_known_by_its_version(version: bytes, options: set[str]) -> None:
    assert known_without_features(version) == options


@pytest.mark.parametrize(("runtime", "locks"), [("runc", True), ("crun", False)])
def test_crun_is_known_to_bind_volumes_into_a_user_namespace_unlocked_and_without_submounts(
    runtime: str, locks: bool
) -> None:
    """Asked of the node's own binaries: runc 1.1.5 (a features command) and crun 1.8.1 (none)."""
    binary = shutil.which(runtime)
    if binary is None:
        pytest.skip(f"{runtime} is not installed")
    features = asyncio.run(probe(binary))
    assert features.locks_readonly_in_userns is locks
    assert features.rbinds_in_userns is locks
