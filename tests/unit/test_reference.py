from __future__ import annotations

import pytest

from moorage.errors import InvalidArgument
from moorage.images.reference import Reference, is_qualified, parse

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2"),
        ("quay.io/coreos/etcd:v3.5.9", "quay.io/coreos/etcd:v3.5.9"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/team/app:dev", "localhost:5000/team/app:dev"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
        ("[::1]:5000/app:v1", "[::1]:5000/app:v1"),
        (f"busybox@{SHA}", f"docker.io/library/busybox@{SHA}"),
        (f"registry.k8s.io/pause:3.10@{SHA}", f"registry.k8s.io/pause:3.10@{SHA}"),
        (
            "my-registry.example.com:443/a_b/c__d/e-f.g:Tag_1.0-rc",
            "my-registry.example.com:443/a_b/c__d/e-f.g:Tag_1.0-rc",
        ),
    ],
)
def test_normalization(text: str, normalized: str) -> None:
    assert str(parse(text)) == normalized


def test_parts_and_forms() -> None:
    ref = parse("localhost:5000/team/app:dev")
    assert ref == Reference("localhost:5000", "team/app", "dev", "")
    assert ref.name == "localhost:5000/team/app"
    assert ref.repo_tag == "localhost:5000/team/app:dev"
    assert parse("busybox").familiar() == "busybox:latest"
    assert parse("bitnami/redis:7").familiar() == "bitnami/redis:7"
    assert parse("quay.io/a/b").familiar() == "quay.io/a/b:latest"
    assert parse(f"busybox@{SHA}").repo_tag == ""
    assert parse("busybox:1").with_digest(SHA).digest == SHA


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        (" busybox", "white space"),
        ("Busybox", "must be lower-case"),
        ("busybox:", "invalid tag ''"),
        ("busybox:-x", "invalid tag '-x'"),
        ("busybox:" + "t" * 129, "invalid tag"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@sha256:" + "A" * 64, "lower-case hex"),
        ("busybox@" + "sha256:" + "a" * 63, "expected 64"),
        ("quay.io/", "empty repository path"),
        ("quay.io//x", "invalid repository component ''"),
        ("a..b/c", "invalid registry 'a..b'"),
        ("a/b..c", "invalid repository component 'b..c'"),
        ("exa_mple.com/x", "invalid registry"),
        ("/x", "invalid repository component ''"),
        ("x" * 300, "longer than 255"),
    ],
)
def test_invalid_references(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse(text)
    assert message in err.value.message


def test_is_qualified() -> None:
    assert is_qualified("quay.io/x")
    assert is_qualified("localhost/x")
    assert is_qualified("host:5000/x")
    assert not is_qualified("busybox")
    assert not is_qualified("library/busybox")
