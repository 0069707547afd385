"""What a hostile registry's answers cost the daemon: an error body is read only up to a bound and never
inflated, against a real HTTP server on 127.0.0.1 and the real registry client."""

from __future__ import annotations

import asyncio
import gzip
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moorage.errors import NotFound
from moorage.images.auth import Credentials
from moorage.images.registry_client import HttpClients, RegistryClient

pytestmark = pytest.mark.integration

BOMB = gzip.compress(b"\0" * (256 << 20), compresslevel=9)  # 256 MiB of zeros in about 250 KiB


class _Bomb(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BOMB)))
        self.end_headers()
        self.wfile.write(BOMB)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def bomb_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bomb)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_encoded_error_body_is_not_inflated(bomb_server: str) -> None:
    async def pull() -> None:
        http = HttpClients.create(30.0)
        client = RegistryClient(http, bomb_server, "app", insecure=True, credentials=Credentials(), retries=1)
        try:
            with pytest.raises(NotFound):
                await client.manifest("1")
        finally:
            await http.aclose()

    tracemalloc.start()
    try:
        asyncio.run(pull())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak >> 20} MiB held for a {len(BOMB) >> 10} KiB error body"
