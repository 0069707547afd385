from __future__ import annotations

import pytest

from moorage.api import validate
from moorage.cri import pb
from moorage.errors import InvalidArgument
from moorage.runtime.pods import pod_cidr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is required"),
        ("a\0b", "NUL byte"),
        ("a/b", "path separator"),
        ("..", "must not be '..'"),
        ("x" * 254, "at most 253"),
    ],
)
def test_bad_names_are_refused_naming_the_field(value: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        validate.name(value, "config.metadata.name")
    assert "config.metadata.name" in err.value.message


def test_good_names_pass() -> None:
    assert validate.name("nginx-7c5ddbdf54-x2x7q", "n") == "nginx-7c5ddbdf54-x2x7q"
    assert validate.object_id("4a3f", "id") == "4a3f"


def test_missing_sub_message_is_named() -> None:
    with pytest.raises(InvalidArgument, match=r"RunPodSandboxRequest\.config is required"):
        validate.present(pb.RunPodSandboxRequest(), "config", "RunPodSandboxRequest")


def test_pod_cidr_parsing() -> None:
    assert pod_cidr.parse("10.244.1.0/24") == ("10.244.1.0/24",)
    assert pod_cidr.parse("10.244.1.0/24, fd00:1::/64") == ("10.244.1.0/24", "fd00:1::/64")
    for bad, message in [
        ("10.244.1.1/24", "has host bits set"),
        ("nonsense", "is not a CIDR"),
        ("10.0.0.0/8,10.1.0.0/16", "at most one IPv4 and one IPv6"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            pod_cidr.parse(bad)
