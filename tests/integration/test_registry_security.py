"""Registries and credentials (issue 12): no HTTP downgrade, credentials only where they belong, short-name
enforcement, token-realm checks, pulls with different credentials kept apart, certs.d TLS. Against real
docker-registry instances, recording proxies in front of them and a real token server."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures import images as fixtures
from tests.fixtures.errors import rpc_error
from tests.fixtures.image_store import assert_store_empty
from tests.fixtures.proxy import FaultProxy
from tests.fixtures.registry import Registry, free_port
from tests.fixtures.tls import PrivateCA
from tests.integration.daemon import DaemonProcess, running_node

pytestmark = pytest.mark.integration

ALICE = pb.AuthConfig(username="alice", password="s3cret")
ALICE_BASIC = "Basic " + base64.b64encode(b"alice:s3cret").decode()


@pytest.fixture(scope="module")
def app() -> fixtures.Image:
    return fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["app"]})


@pytest.fixture(scope="module")
def private(app: fixtures.Image) -> Iterator[Registry]:
    """A basic-auth registry (alice) holding team/app:1."""
    with Registry(auth="basic", users={"alice": "s3cret"}) as reg:
        fixtures.push(reg, "team/app", "1", app)
        yield reg


@pytest.fixture
def plain_node() -> Iterator[DaemonProcess]:
    """A started daemon whose registries.conf the test writes (it is read at every pull)."""
    with running_node("unused.invalid") as d:
        d.registries_conf.write_text("")
        yield d


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return PrivateCA(tmp_path_factory.mktemp("ca"))


def authorizations(proxy: FaultProxy) -> list[str]:
    return [h["authorization"] for h in proxy.request_headers if "authorization" in h]


# --- 1. no HTTP downgrade -----------------------------------------------------------------------------------


def test_a_host_used_as_an_insecure_mirror_is_still_https_only_where_it_is_not_insecure(
    plain_node: DaemonProcess, registry: Registry, busybox: object
) -> None:
    plain_node.registries_conf.write_text(
        '[[registry]]\nprefix = "example.invalid"\nlocation = "127.0.0.1:9"\n'
        f'[[registry.mirror]]\nlocation = "{registry.host}"\ninsecure = true\n'
    )
    with plain_node.client() as client:
        client.pull_image("example.invalid/test/busybox:1")  # over plain HTTP: the mirror is insecure
        client.remove_image("example.invalid/test/busybox:1")
        # the same host named directly is not marked insecure: HTTPS only, which this registry does not speak
        err = rpc_error(lambda: client.pull_image(f"{registry.host}/test/busybox:1"))
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert f"{registry.host}" in err.details
    assert_store_empty(plain_node)


def test_a_failed_https_attempt_does_not_pin_an_insecure_host_to_http(
    plain_node: DaemonProcess, ca: PrivateCA, app: fixtures.Image
) -> None:
    port = free_port()
    plain_node.registries_conf.write_text(f'[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n')
    with plain_node.client() as client:
        err = rpc_error(lambda: client.pull_image(f"127.0.0.1:{port}/team/app:1"))  # nothing listens yet
        assert err.code == grpc.StatusCode.UNAVAILABLE
        with Registry(tls=ca, port=port) as reg:  # now an HTTPS-only registry (unverified: insecure) is there
            fixtures.push(reg, "team/app", "1", app)
            assert client.pull_image(f"127.0.0.1:{port}/team/app:1") == app.config_digest


# --- 2. credentials only where they belong ------------------------------------------------------------------


def test_a_mirror_never_gets_the_primarys_credentials(
    plain_node: DaemonProcess, private: Registry, app: fixtures.Image
) -> None:
    with FaultProxy(private) as mirror, FaultProxy(private) as primary:
        plain_node.registries_conf.write_text(
            f'[[registry]]\nprefix = "example.invalid"\nlocation = "{primary.host}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n'
        )
        ref = "example.invalid/team/app:1"
        with plain_node.client() as client:
            # the request's credentials: for example.invalid (the image's registry), so its location gets them
            assert client.pull_image(ref, auth=ALICE) == app.config_digest
            client.remove_image(ref)
            # server_address naming the primary's host: the same
            auth = pb.AuthConfig(username="alice", password="s3cret", server_address=f"https://{primary.host}/v2/")
            assert client.pull_image(ref, auth=auth) == app.config_digest
            client.remove_image(ref)
            # a credential-file entry for the primary's host only
            plain_node.auth_file.write_text(json.dumps({"auths": {primary.host: {"auth": ALICE_BASIC[6:]}}}))
            assert client.pull_image(ref) == app.config_digest
            client.remove_image(ref)
            assert authorizations(mirror) == []
            assert mirror.paths("GET")  # the mirror was asked, and answered 401
            assert ALICE_BASIC in authorizations(primary)
            # the mirror's own entry: now the mirror gets it
            primary.reset()
            plain_node.auth_file.write_text(json.dumps({"auths": {mirror.host: {"auth": ALICE_BASIC[6:]}}}))
            assert client.pull_image(ref) == app.config_digest
        assert ALICE_BASIC in authorizations(mirror)
        assert primary.paths() == []


def test_a_registrys_session_cookie_is_never_sent_back(
    plain_node: DaemonProcess, private: Registry, app: fixtures.Image
) -> None:
    """The HTTP clients are shared by every pull over one TLS setting: a cookie one pull's answer set must not
    carry its authorisation to the next pull, made without credentials."""
    with FaultProxy(private) as proxy:
        proxy.set_cookie = "sid=alice-session; Path=/"
        plain_node.registries_conf.write_text(f'[[registry]]\nlocation = "{proxy.host}"\ninsecure = true\n')
        ref = f"{proxy.host}/team/app:1"
        with plain_node.client() as client:
            assert client.pull_image(ref, auth=ALICE) == app.config_digest
            client.remove_image(ref)
            failure = rpc_error(lambda: client.pull_image(ref))
        assert failure.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), failure
        assert proxy.request_headers
        assert not [h for h in proxy.request_headers if "cookie" in h]


def test_a_pin_by_a_digest_that_cannot_be_verified_is_refused_before_any_request(
    plain_node: DaemonProcess, private: Registry
) -> None:
    """Only sha256, sha384 and sha512 pins are pulled (each checked against what the registry sends): a pin of
    another algorithm could not be checked, so any mirror could serve any image for it."""
    with FaultProxy(private) as proxy:
        plain_node.registries_conf.write_text(f'[[registry]]\nlocation = "{proxy.host}"\ninsecure = true\n')
        with plain_node.client() as client:
            failure = rpc_error(lambda: client.pull_image(f"{proxy.host}/team/app@blake3:{'a' * 64}", auth=ALICE))
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'blake3' cannot be verified" in failure.details
        assert proxy.paths("GET") == [p for p in proxy.paths("GET") if "/manifests/" not in p]


def test_credentials_go_only_to_the_search_registry_they_name(
    plain_node: DaemonProcess, private: Registry, app: fixtures.Image
) -> None:
    with (
        Registry(auth="basic", users={"bob": "other"}) as other_reg,
        FaultProxy(other_reg) as other,
        FaultProxy(private) as mine,
    ):
        plain_node.registries_conf.write_text(
            f'unqualified-search-registries = ["{other.host}", "{mine.host}"]\nshort-name-mode = "permissive"\n'
            f'[[registry]]\nlocation = "{other.host}"\ninsecure = true\n'
            f'[[registry]]\nlocation = "{mine.host}"\ninsecure = true\n'
        )
        with plain_node.client() as client:
            auth = pb.AuthConfig(username="alice", password="s3cret", server_address=mine.host)
            assert client.pull_image("team/app:1", auth=auth) == app.config_digest
            client.remove_image(f"{mine.host}/team/app:1")
            # no server_address: a short name's own registry is docker.io, which neither of these is
            err = rpc_error(lambda: client.pull_image("team/app:1", auth=ALICE))
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
        assert other.paths("GET")
        assert authorizations(other) == []
        assert authorizations(mine) == [ALICE_BASIC] * len(authorizations(mine))


# --- 3. short names -----------------------------------------------------------------------------------------


def test_an_ambiguous_short_name_is_refused_in_enforcing_mode(
    plain_node: DaemonProcess, registry: Registry, busybox: object
) -> None:
    with FaultProxy(registry) as first:
        search = f'unqualified-search-registries = ["{first.host}", "{registry.host}"]\n'
        insecure = "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n' for h in (first.host, registry.host))
        plain_node.registries_conf.write_text(search + insecure)  # short-name-mode: enforcing by default
        with plain_node.client() as client:
            err = rpc_error(lambda: client.pull_image("test/busybox:1"))
            assert err.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "ambiguous" in err.details
            assert first.host in err.details
            assert registry.host in err.details
            assert first.paths() == []  # refused before asking anyone
            # an alias decides: from short-name-aliases.conf, which wins over registries.conf's
            plain_node.registries_conf.write_text(
                search + '[aliases]\n"test/busybox" = "127.0.0.1:9/nowhere"\n' + insecure
            )
            plain_node.short_name_aliases.write_text(f'[aliases]\n"test/busybox" = "{registry.host}/test/busybox"\n')
            client.pull_image("test/busybox:1")
            assert first.paths() == []
            client.remove_image(f"{registry.host}/test/busybox:1")
            # an alias from a registries.conf.d drop-in
            plain_node.short_name_aliases.unlink()
            plain_node.registries_conf.write_text(search + insecure)
            dropins = plain_node.registries_conf.parent / "registries.conf.d"
            dropins.mkdir()
            (dropins / "50-alias.conf").write_text(f'[aliases]\n"test/busybox" = "{first.host}/test/busybox"\n')
            client.pull_image("test/busybox:1")
            assert first.paths("GET")
            client.remove_image(f"{first.host}/test/busybox:1")
            (dropins / "50-alias.conf").unlink()
            # permissive and disabled try the search registries in order
            for mode in ("permissive", "disabled"):
                first.reset()
                plain_node.registries_conf.write_text(f'short-name-mode = "{mode}"\n' + search + insecure)
                client.pull_image("test/busybox:1")
                assert first.paths("GET"), mode
                client.remove_image(f"{first.host}/test/busybox:1")


# --- 4. token realms ----------------------------------------------------------------------------------------


def trust_ca(node: DaemonProcess, host: str, ca: PrivateCA, client_cert: tuple[Path, Path] | None = None) -> Path:
    directory = node.certs_dir / host
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(ca.ca_path.read_bytes())
    if client_cert is not None:
        (directory / "client.cert").write_bytes(client_cert[0].read_bytes())
        (directory / "client.key").write_bytes(client_cert[1].read_bytes())
    return directory


def test_an_https_registry_may_not_send_credentials_to_a_plain_http_realm(
    plain_node: DaemonProcess, ca: PrivateCA, app: fixtures.Image
) -> None:
    with Registry(auth="token", users={"alice": "s3cret"}, tls=ca) as reg:
        assert reg.token_server is not None
        fixtures.push(reg, "team/app", "1", app)
        reg.token_server.requests.clear()
        trust_ca(plain_node, reg.host, ca)
        with plain_node.client() as client:
            err = rpc_error(lambda: client.pull_image(f"{reg.host}/team/app:1", auth=ALICE))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "plain http for a registry reached over https" in err.details
        assert reg.token_server.requests == []


def test_an_https_realm_of_an_https_registry_is_used(
    plain_node: DaemonProcess, ca: PrivateCA, app: fixtures.Image
) -> None:
    with Registry(auth="token", users={"alice": "s3cret"}, tls=ca, token_tls=True) as reg:
        assert reg.token_server is not None
        fixtures.push(reg, "team/app", "1", app)
        trust_ca(plain_node, reg.host, ca)
        with plain_node.client() as client:
            assert client.pull_image(f"{reg.host}/team/app:1", auth=ALICE) == app.config_digest
        assert reg.token_server.requests[-1]["authorization"] == ALICE_BASIC


def test_a_link_local_realm_is_refused(plain_node: DaemonProcess) -> None:
    with Registry(auth="token", users={"alice": "s3cret"}, realm="http://169.254.169.254/latest/token") as reg:
        plain_node.registries_conf.write_text(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        with plain_node.client() as client:
            err = rpc_error(lambda: client.pull_image(f"{reg.host}/team/app:1", auth=ALICE))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "link-local" in err.details


def test_a_token_servers_error_body_is_echoed_only_as_a_short_clean_excerpt(
    plain_node: DaemonProcess, app: fixtures.Image
) -> None:
    with Registry(auth="token", users={"alice": "s3cret"}) as reg:
        assert reg.token_server is not None
        fixtures.push(reg, "team/app", "1", app)
        message = "\x1b[31mdenied\x1b[0m\n" + "A" * 20000
        reg.token_server.error_body = json.dumps({"errors": [{"code": "DENIED", "message": message}]}).encode()
        plain_node.registries_conf.write_text(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        with plain_node.client() as client:
            err = rpc_error(
                lambda: client.pull_image(f"{reg.host}/team/app:1", auth=pb.AuthConfig(username="alice", password="x"))
            )
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert "DENIED: denied" in err.details
    assert "\x1b" not in err.details
    assert "\n" not in err.details
    assert len(err.details) < 1000


# --- 5. shared pulls ----------------------------------------------------------------------------------------


def test_a_pull_with_bad_credentials_does_not_fail_a_concurrent_one_with_good_ones(
    plain_node: DaemonProcess, private: Registry, app: fixtures.Image
) -> None:
    with FaultProxy(private) as proxy:
        plain_node.registries_conf.write_text(f'[[registry]]\nlocation = "{proxy.host}"\ninsecure = true\n')
        proxy.fail("/manifests/1", status=429, retry_after=2)  # holds the first pull for 2 s
        ref = f"{proxy.host}/team/app:1"
        failures: list[grpc.StatusCode] = []

        def bad_pull() -> None:
            with plain_node.client(timeout=60) as client:
                failures.append(
                    rpc_error(
                        lambda: client.pull_image(ref, auth=pb.AuthConfig(username="alice", password="wrong"))
                    ).code
                )

        bad = threading.Thread(target=bad_pull)
        bad.start()
        deadline = time.monotonic() + 10
        while not any(status == 429 for _, _, status in proxy.requests) and time.monotonic() < deadline:
            time.sleep(0.02)
        with plain_node.client(timeout=60) as client:
            assert client.pull_image(ref, auth=ALICE) == app.config_digest
        bad.join()
    assert failures == [grpc.StatusCode.UNAUTHENTICATED]


# --- 6. certs.d ---------------------------------------------------------------------------------------------


def test_certs_d_gives_a_registry_its_ca_and_a_client_certificate(
    plain_node: DaemonProcess, ca: PrivateCA, app: fixtures.Image
) -> None:
    with Registry(tls=ca, client_certs=True) as reg:
        assert reg.client_cert is not None
        fixtures.push(reg, "team/app", "1", app)
        ref = f"{reg.host}/team/app:1"
        with plain_node.client() as client:
            err = rpc_error(lambda: client.pull_image(ref))  # the node's CA store does not know the CA
            assert err.code == grpc.StatusCode.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in err.details
            directory = trust_ca(plain_node, reg.host, ca)
            err = rpc_error(lambda: client.pull_image(ref))  # trusted now, but the registry wants a client cert
            assert err.code == grpc.StatusCode.UNAVAILABLE
            (directory / "client.cert").write_bytes(reg.client_cert[0].read_bytes())
            err = rpc_error(lambda: client.pull_image(ref))  # a certificate without its key
            assert err.code == grpc.StatusCode.FAILED_PRECONDITION
            assert f"{directory / 'client.cert'} has no key" in err.details
            (directory / "client.key").write_bytes(reg.client_cert[1].read_bytes())
            assert client.pull_image(ref) == app.config_digest
