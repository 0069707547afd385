"""Where credentials may go (issue 12): per endpoint, and never to a refused token realm (pure)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from moorage.images import auth
from moorage.images.auth import Credentials
from moorage.images.reference import parse
from moorage.images.registry_client import _excerpt

ALICE = Credentials("alice", "s3cret")


@pytest.mark.parametrize(
    ("server_address", "scope"),
    [
        ("", "docker.io"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://quay.io", "quay.io"),
        ("quay.io/team", "quay.io/team"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
    ],
)
def test_the_scope_of_request_credentials(server_address: str, scope: str) -> None:
    assert auth.scope(server_address, parse("busybox")) == scope


def test_request_credentials_go_only_to_the_registry_they_are_for(tmp_path: Path) -> None:
    files = [str(tmp_path / "auth.json")]
    named = parse("example.com/team/app:1")
    mirror = parse("mirror.example.net/team/app:1")
    assert auth.for_endpoint(ALICE, named, named, named, mirror=False, auth_files=files) == ALICE
    assert not auth.for_endpoint(ALICE, named, named, mirror, mirror=True, auth_files=files)
    # a location registries.conf rewrites the registry to is the registry: it gets them, a mirror does not
    location = parse("internal.example.com/team/app:1")
    assert auth.for_endpoint(ALICE, named, named, location, mirror=False, auth_files=files) == ALICE
    # server_address names a repository: only under it
    scoped = Credentials("alice", "s3cret", server_address="example.com/team")
    assert auth.for_endpoint(scoped, named, named, named, mirror=False, auth_files=files) == scoped
    other = parse("example.com/teammate/app:1")
    assert not auth.for_endpoint(scoped, other, other, other, mirror=False, auth_files=files)
    # a short name's search registry other than docker.io does not get credentials given for docker.io
    short = parse("app")
    quay = parse("app", default_domain="quay.io")
    assert not auth.for_endpoint(ALICE, short, quay, quay, mirror=False, auth_files=files)
    # a mirror gets its own credential-file entry
    (tmp_path / "auth.json").write_text(
        json.dumps({"auths": {"mirror.example.net": {"username": "m", "password": "p"}}})
    )
    assert auth.for_endpoint(ALICE, named, named, mirror, mirror=True, auth_files=files) == Credentials("m", "p")


@pytest.mark.parametrize(
    ("realm", "scheme", "registry", "problem"),
    [
        ("https://auth.example.com/token", "https", "registry.example.com", ""),
        ("http://auth.example.com/token", "https", "registry.example.com", "plain http"),
        ("http://127.0.0.1:5001/token", "http", "127.0.0.1:5000", ""),
        ("http://169.254.169.254/latest", "http", "127.0.0.1:5000", "link-local"),
        ("https://[fe80::1]/token", "https", "registry.example.com", "link-local"),
        ("https://[::ffff:169.254.169.254]/token", "https", "registry.example.com", "link-local"),
        ("https://0.0.0.0/token", "https", "registry.example.com", "link-local"),
        ("https://127.0.0.1/token", "https", "203.0.113.5:5000", "loopback"),
        ("https://localhost/token", "https", "203.0.113.5", "loopback"),
        ("https://[::1]/token", "https", "[::1]:5000", ""),
        ("file:///etc/passwd", "https", "registry.example.com", "not an http(s) URL"),
    ],
)
def test_token_realms(realm: str, scheme: str, registry: str, problem: str) -> None:
    found = asyncio.run(auth.realm_problem(realm, registry_scheme=scheme, registry_host=registry))
    assert problem in found if problem else found == ""


def test_excerpts_are_short_and_printable() -> None:
    text = _excerpt("\x1b[31mdenied\x1b[0m\r\n\x00" + "x" * 10_000)
    assert text.startswith("denied x")
    assert len(text) <= 160
    assert text.isprintable()


def test_credentials_fingerprints_tell_pulls_apart() -> None:
    assert ALICE.fingerprint() != Credentials("alice", "wrong").fingerprint()
    assert ALICE.fingerprint() == Credentials("alice", "s3cret").fingerprint()
    assert Credentials().fingerprint() == ""
