"""Pulls through auth, mirrors and a fault-injecting proxy: retries, resume, verification, stalls, crashes."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures import images as fixtures
from tests.fixtures.errors import rpc_error
from tests.fixtures.image_store import assert_store_empty, blobs, layer_dirs
from tests.fixtures.proxy import FaultProxy
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, running_node

pytestmark = pytest.mark.integration

LAYER_BYTES = 3 << 20


@pytest.fixture(scope="module")
def payload(registry: Registry) -> fixtures.Image:
    """A two-layer image with a 3 MiB uncompressed layer, big enough to cut mid-blob."""
    big = fixtures.layer([fixtures.Entry.file("data", bytes(range(256)) * (LAYER_BYTES // 256))], "none")
    img = fixtures.image([fixtures.busybox_layer(), big])
    fixtures.push(registry, "test/payload", "1", img)
    return img


@pytest.fixture
def proxy(registry: Registry, node: DaemonProcess) -> Iterator[FaultProxy]:
    """A fault proxy in front of the registry, trusted by the node as a registry of its own."""
    with FaultProxy(registry) as p:
        node.trust_registry(p.host)
        yield p


def big_blob(img: fixtures.Image) -> str:
    return img.layers[1].digest


def test_retries_after_500_and_429(node: DaemonProcess, proxy: FaultProxy, payload: fixtures.Image) -> None:
    proxy.fail("/manifests/", status=500, times=2)
    proxy.fail(big_blob(payload), status=429, times=1, retry_after=1)
    with node.client() as client:
        assert client.pull_image(f"{proxy.host}/test/payload:1") == payload.config_digest
    statuses = [(path, status) for _, path, status in proxy.requests]
    assert sum(1 for p, s in statuses if "/manifests/" in p and s == 500) == 2
    assert any(big_blob(payload) in p and s == 429 for p, s in statuses)


def test_a_dropped_connection_resumes_with_range(
    node: DaemonProcess, proxy: FaultProxy, payload: fixtures.Image
) -> None:
    proxy.drop_after(big_blob(payload), nbytes=1 << 20, times=2)
    with node.client() as client:
        assert client.pull_image(f"{proxy.host}/test/payload:1") == payload.config_digest
    ranges = [
        headers.get("Range") or headers.get("range")
        for (_, path, _), headers in zip(proxy.requests, proxy.request_headers, strict=True)
        if big_blob(payload) in path
    ]
    assert ranges[0] is None
    assert len(ranges) == 3
    assert all(r is not None and r.startswith("bytes=") and int(r[6:].rstrip("-")) >= 1 << 20 for r in ranges[1:])


def test_a_corrupted_blob_is_fetched_again(node: DaemonProcess, proxy: FaultProxy, payload: fixtures.Image) -> None:
    proxy.corrupt(big_blob(payload), offset=12345, times=1)
    with node.client() as client:
        assert client.pull_image(f"{proxy.host}/test/payload:1") == payload.config_digest
    assert len([p for p in proxy.paths("GET") if big_blob(payload) in p]) == 2


def test_a_blob_corrupted_every_time_fails_with_data_loss(
    node: DaemonProcess, proxy: FaultProxy, payload: fixtures.Image
) -> None:
    proxy.corrupt(big_blob(payload), offset=7, times=10)
    with node.client() as client:
        err = rpc_error(lambda: client.pull_image(f"{proxy.host}/test/payload:1"))
        assert err.code == grpc.StatusCode.DATA_LOSS
        assert f"blob {big_blob(payload)} does not match its digest" in err.details
        assert client.list_images() == []
    assert_store_empty(node)


def test_a_truncated_blob_fails_and_leaves_nothing(
    node: DaemonProcess, proxy: FaultProxy, payload: fixtures.Image
) -> None:
    proxy.drop_after(big_blob(payload), nbytes=100, times=50)
    with node.client() as client:
        err = rpc_error(lambda: client.pull_image(f"{proxy.host}/test/payload:1"))
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert "mid-download" in err.details or "attempts" in err.details
    assert_store_empty(node)


def test_a_corrupted_manifest_pulled_by_digest_is_refused(
    node: DaemonProcess, proxy: FaultProxy, payload: fixtures.Image
) -> None:
    proxy.corrupt(f"/manifests/{payload.manifest_digest}", offset=3, times=1)
    with node.client() as client:
        err = rpc_error(lambda: client.pull_image(f"{proxy.host}/test/payload@{payload.manifest_digest}"))
    assert err.code == grpc.StatusCode.DATA_LOSS
    assert_store_empty(node)


def test_redirects_to_blob_storage_are_followed(
    node: DaemonProcess, proxy: FaultProxy, payload: fixtures.Image
) -> None:
    proxy.redirect_blobs = True
    with node.client() as client:
        assert client.pull_image(f"{proxy.host}/test/payload:1") == payload.config_digest
    assert any(p.startswith("/_storage/") for p in proxy.paths("GET"))


def test_a_stalled_pull_is_cancelled_after_the_progress_timeout(
    unstarted: DaemonProcess, registry: Registry, payload: fixtures.Image
) -> None:
    with FaultProxy(registry) as proxy:
        unstarted.trust_registry(proxy.host)
        unstarted.write_config("", image="pull_progress_timeout = 2")
        unstarted.start()
        proxy.stall(big_blob(payload), seconds=60, times=5)
        started = time.monotonic()
        with unstarted.client() as client:
            err = rpc_error(lambda: client.pull_image(f"{proxy.host}/test/payload:1"))
        elapsed = time.monotonic() - started
    assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no progress for 2 s (image.pull_progress_timeout)" in err.details
    assert elapsed < 30
    assert_store_empty(unstarted)


def test_a_mirror_is_tried_first_and_a_dead_one_is_skipped(
    node: DaemonProcess, registry: Registry, payload: fixtures.Image
) -> None:
    with FaultProxy(registry) as mirror:
        node.trust_registry(
            "example.invalid",
            f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n'
            f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n',
        )
        with node.client() as client:
            assert client.pull_image("example.invalid/test/payload:1") == payload.config_digest
            status = client.image_status("example.invalid/test/payload:1").image
        assert list(status.repo_tags) == ["example.invalid/test/payload:1"]
        assert any("/manifests/1" in p for p in mirror.paths("GET"))


def test_a_failed_pull_names_every_endpoint_tried(node: DaemonProcess, registry: Registry) -> None:
    dead = "127.0.0.1:9"  # discard port: nothing listens there
    node.trust_registry(registry.host, f'[[registry.mirror]]\nlocation = "{dead}"\ninsecure = true\n')
    with node.client() as client:
        err = rpc_error(lambda: client.pull_image(f"{registry.host}/test/not-there:1"))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert f"mirror {dead}:" in err.details
    assert f"{registry.host}: manifest" in err.details


def test_short_names_resolve_through_unqualified_search_registries(
    node: DaemonProcess, registry: Registry, payload: fixtures.Image
) -> None:
    node.registries_conf.write_text(
        f'unqualified-search-registries = ["{registry.host}"]\n'
        f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
    )
    with node.client() as client:
        assert client.pull_image("test/payload:1") == payload.config_digest
        assert client.image_status("test/payload:1").image.repo_tags == [f"{registry.host}/test/payload:1"]


def test_a_blocked_registry_is_refused(node: DaemonProcess, registry: Registry) -> None:
    node.trust_registry(registry.host, "blocked = true\n")
    with node.client() as client:
        err = rpc_error(lambda: client.pull_image(f"{registry.host}/test/payload:1"))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "blocked" in err.details


# --- auth ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["basic", "token"])
def private(request: pytest.FixtureRequest) -> Iterator[Registry]:
    with Registry(auth=request.param, users={"alice": "s3cret"}) as reg:
        img = fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["private"]})
        fixtures.push(reg, "team/app", "1", img)
        yield reg


@pytest.fixture
def private_node(private: Registry) -> Iterator[DaemonProcess]:
    with running_node(private.host) as d:
        yield d


def test_auth_with_request_credentials(private_node: DaemonProcess, private: Registry) -> None:
    ref = f"{private.host}/team/app:1"
    with private_node.client() as client:
        image_id = client.pull_image(ref, auth=pb.AuthConfig(username="alice", password="s3cret"))
        assert client.image_status(ref).image.id == image_id
        client.remove_image(ref)
        encoded = base64.b64encode(b"alice:s3cret").decode()
        assert client.pull_image(ref, auth=pb.AuthConfig(auth=encoded)) == image_id
    if private.auth == "token":
        assert private.token_requests > 0


def test_auth_refusals_are_unauthenticated(private_node: DaemonProcess, private: Registry) -> None:
    ref = f"{private.host}/team/app:1"
    with private_node.client() as client:
        err = rpc_error(lambda: client.pull_image(ref, auth=pb.AuthConfig(username="alice", password="wrong")))
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
        assert "alice" in err.details
        err = rpc_error(lambda: client.pull_image(ref))
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
        assert client.list_images() == []
    assert_store_empty(private_node)


def test_auth_from_a_credential_file(private_node: DaemonProcess, private: Registry) -> None:
    encoded = base64.b64encode(b"alice:s3cret").decode()
    private_node.auth_file.write_text(json.dumps({"auths": {private.host: {"auth": encoded}}}))
    with private_node.client() as client:
        assert client.pull_image(f"{private.host}/team/app:1").startswith("sha256:")


# --- crashes ------------------------------------------------------------------------------------------------


def test_sigkill_mid_pull_leaves_a_store_the_next_start_repairs(
    node: DaemonProcess, proxy: FaultProxy, payload: fixtures.Image
) -> None:
    proxy.stall(big_blob(payload), seconds=30, times=1, after_bytes=1 << 20)
    ref = f"{proxy.host}/test/payload:1"

    def pull() -> None:
        with node.client() as client, pytest.raises(grpc.RpcError):
            client.pull_image(ref)

    puller = threading.Thread(target=pull)
    puller.start()
    deadline = time.monotonic() + 20
    while not any(big_blob(payload) in p for p in proxy.paths("GET")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    # what a crash mid-unpack leaves: a half-filled layer dir in .tmp and an unreferenced committed one
    (node.root / "snapshots" / ".tmp" / "half").mkdir()
    (node.root / "snapshots" / ("ab" * 32)).mkdir()
    node.stop(signal.SIGKILL)
    puller.join()
    node.start()
    assert list((node.root / "snapshots" / ".tmp").iterdir()) == []
    assert not (node.root / "snapshots" / ("ab" * 32)).exists()
    assert layer_dirs(node) == []
    assert blobs(node) == []  # the config and manifest stored before the kill are unreferenced: collected
    with node.client() as client:
        assert client.list_images() == []
        assert client.pull_image(ref) == payload.config_digest
    assert len(layer_dirs(node)) == 2
