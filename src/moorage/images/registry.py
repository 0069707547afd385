"""A client for one registry endpoint, speaking the OCI distribution API over httpx.

It fetches manifests and blobs of one repository, answers ``Basic`` and ``Bearer`` challenges (fetching and
caching tokens per scope), retries with backoff on 429, 5xx and dropped connections (honouring
``Retry-After``), resumes a blob download with ``Range`` where it stopped, and follows redirects to blob
storage (httpx drops the Authorization header when a redirect leaves the registry's origin). Plain HTTP is
used only for endpoints marked insecure, and only after HTTPS failed there.

HTTP failures become MoorageErrors here, so callers above see NOT_FOUND, UNAUTHENTICATED, ... with the
endpoint in the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import structlog

from moorage.errors import (
    DataLoss,
    InvalidImage,
    MoorageError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from moorage.images import manifest as mf
from moorage.images.auth import Credentials, parse_challenges
from moorage.images.content import Ingest

log = structlog.get_logger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 10.0
CHUNK = 256 << 10


@dataclass
class HttpClients:
    """The shared connection pools: one verifying TLS, one for insecure registries. Scheme choice per host."""

    secure: httpx.AsyncClient
    insecure: httpx.AsyncClient
    schemes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, read_timeout: float | None) -> HttpClients:
        def client(verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                verify=verify,
                timeout=httpx.Timeout(30.0, read=read_timeout),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                follow_redirects=True,
                trust_env=False,
            )

        # Verified against the node's CA store (where operators add private registries' CAs), not certifi's.
        return cls(client(ssl.create_default_context()), client(False))

    async def aclose(self) -> None:
        await self.secure.aclose()
        await self.insecure.aclose()


@dataclass(frozen=True)
class Fetched:
    body: bytes
    media_type: str
    digest: str


class RegistryClient:
    """One (host, repository) with its credentials; ``retries`` attempts per request."""

    def __init__(
        self,
        http: HttpClients,
        host: str,
        repository: str,
        *,
        insecure: bool,
        credentials: Credentials,
        retries: int,
    ) -> None:
        self.http = http
        self.host = host
        self.repository = repository
        self.insecure = insecure
        self.credentials = credentials
        self.retries = retries
        self._authorization: str | None = f"Bearer {credentials.registry_token}" if credentials.registry_token else None

    @property
    def _client(self) -> httpx.AsyncClient:
        return self.http.insecure if self.insecure else self.http.secure

    # --- the distribution API -------------------------------------------------------------------------------

    async def manifest(self, reference: str) -> Fetched:
        """The manifest or index ``reference`` (a tag or a digest) names, verified when named by digest."""
        where = f"{self.host}/{self.repository}:{reference}"
        headers = {"Accept": mf.ACCEPT}
        response = await self._request("GET", f"manifests/{reference}", headers, what=f"manifest {where}")
        try:
            body = await _read_capped(response, mf.MAX_MANIFEST_BYTES, f"manifest of {where}")
        finally:
            await response.aclose()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DataLoss(f"manifest {where}: the registry sent content that hashes to {digest}")
        return Fetched(body, response.headers.get("content-type", ""), digest)

    async def small_blob(self, digest: str, size: int) -> bytes:
        """A config blob: read into memory, size-capped and verified."""
        mf.check_size(f"blob {digest}", size)
        what = f"blob {self.host}/{self.repository}@{digest}"
        response = await self._request("GET", f"blobs/{digest}", {}, what=what)
        try:
            body = await _read_capped(response, mf.MAX_MANIFEST_BYTES, what)
        finally:
            await response.aclose()
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise DataLoss(f"{what}: content does not match its digest")
        return body

    async def download(self, digest: str, ingest: Ingest, on_bytes: Callable[[int], None]) -> None:
        """Stream a blob into ``ingest``, resuming with Range after a dropped connection. The caller commits."""
        what = f"blob {self.host}/{self.repository}@{digest}"
        attempt = 0
        while True:
            offset = ingest.offset
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = await self._request("GET", f"blobs/{digest}", headers, what=what)
            try:
                if offset and response.status_code != 206:
                    log.info("registry ignored the range; downloading from the start", blob=digest, offset=offset)
                    on_bytes(-offset)
                    ingest.reset()
                async for chunk in response.aiter_raw(CHUNK):
                    ingest.write(chunk)
                    on_bytes(len(chunk))
                return
            except httpx.TransportError as exc:
                attempt += 1
                if attempt >= self.retries:
                    raise Unavailable(
                        f"{what}: connection failed {attempt} times mid-download, last: {_describe(exc)}"
                    ) from None
                log.warning("blob download interrupted; resuming", blob=digest, at=ingest.offset, error=_describe(exc))
                await asyncio.sleep(_backoff(attempt))
            finally:
                await response.aclose()

    # --- requests, retries and auth -------------------------------------------------------------------------

    async def _request(self, method: str, path: str, headers: dict[str, str], *, what: str) -> httpx.Response:
        """Send with retries and auth; returns a 2xx streaming response, or raises the mapped error."""
        authorized = False
        attempt = 0
        while True:
            try:
                response = await self._send(method, path, headers)
            except httpx.TransportError as exc:
                attempt += 1
                if attempt >= self.retries:
                    raise Unavailable(f"{what}: {_describe(exc)} ({attempt} attempts)") from None
                await asyncio.sleep(_backoff(attempt))
                continue
            status = response.status_code
            if status < 300:
                return response
            await response.aread()
            await response.aclose()
            if status == 401 and not authorized:
                await self._authorize(response, what)
                authorized = True
                continue
            if status in RETRY_STATUSES:
                attempt += 1
                if attempt >= self.retries:
                    raise Unavailable(f"{what}: registry answered {_status(response)} ({attempt} attempts)")
                delay = _retry_after(response) or _backoff(attempt)
                log.info("registry asked to retry", what=what, status=status, seconds=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            raise _http_error(response, what, self.credentials)

    async def _send(self, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        base = await self._base_url()
        all_headers = dict(headers)
        if self._authorization:
            all_headers["Authorization"] = self._authorization
        request = self._client.build_request(method, f"{base}/v2/{self.repository}/{path}", headers=all_headers)
        return await self._client.send(request, stream=True)

    async def _base_url(self) -> str:
        """https://host; for an insecure registry, http://host when it does not speak TLS (checked once)."""
        scheme = self.http.schemes.get(self.host)
        if scheme is None:
            scheme = "https"
            if self.insecure:
                try:
                    await self._client.get(f"https://{self.host}/v2/", timeout=10.0)
                except httpx.TransportError:
                    scheme = "http"
            self.http.schemes[self.host] = scheme
        return f"{scheme}://{self.host}"

    async def _authorize(self, response: httpx.Response, what: str) -> None:
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None and "realm" in bearer.params:
            self._authorization = "Bearer " + await self._fetch_token(bearer.params, what)
            return
        if any(c.scheme == "basic" for c in challenges):
            if not (self.credentials.username or self.credentials.password):
                raise Unauthenticated(f"{what}: registry {self.host} requires a login and no credentials were given")
            self._authorization = self.credentials.basic()
            return
        raise Unauthenticated(f"{what}: registry {self.host} answered 401 without a challenge moorage understands")

    async def _fetch_token(self, params: dict[str, str], what: str) -> str:
        realm = params["realm"]
        scope = params.get("scope") or f"repository:{self.repository}:pull"
        query = {"scope": scope, **({"service": params["service"]} if "service" in params else {})}
        creds = self.credentials
        try:
            if creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "moorage"}
                response = await self._client.post(realm, data={**form, **query})
            else:
                headers = {"Authorization": creds.basic()} if (creds.username or creds.password) else {}
                response = await self._client.get(realm, params=query, headers=headers)
        except httpx.TransportError as exc:
            raise Unavailable(f"{what}: token server {realm}: {_describe(exc)}") from None
        if response.status_code in (401, 403):
            who = f"the credentials of {creds.username!r}" if creds else "anonymous access"
            raise Unauthenticated(f"{what}: token server {realm} refused {who} ({_status(response)})")
        if response.status_code >= 300:
            raise Unavailable(f"{what}: token server {realm} answered {_status(response)}")
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise Unauthenticated(f"{what}: token server {realm} returned no token")
        return token


async def _read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InvalidImage(f"{what} is {declared} bytes, over the {limit}-byte limit")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise InvalidImage(f"{what} is over the {limit}-byte limit")
    return bytes(body)


def _http_error(response: httpx.Response, what: str, creds: Credentials) -> MoorageError:
    status = response.status_code
    detail = _status(response)
    if status == 401:
        if creds:
            return Unauthenticated(f"{what}: registry refused the credentials of {creds.username!r} ({detail})")
        return Unauthenticated(f"{what}: registry requires a login and no credentials were given ({detail})")
    if status == 403:
        return PermissionDenied(f"{what}: access denied ({detail})")
    if status == 404:
        return NotFound(f"{what}: not found ({detail})")
    return Unavailable(f"{what}: registry answered {detail}")


def _status(response: httpx.Response) -> str:
    """``404 MANIFEST_UNKNOWN: manifest unknown``: the status with the registry's own error code if it sent one."""
    text = f"{response.status_code} {response.reason_phrase}".strip()
    try:
        errors = response.json().get("errors") or []
        if errors and isinstance(errors[0], dict):
            text = f"{response.status_code} {errors[0].get('code', '')}: {errors[0].get('message', '')}"
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        pass
    return text


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return min(float(value), MAX_BACKOFF_SECONDS) if value.isdigit() else None


def _backoff(attempt: int) -> float:
    return float(min(0.25 * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)) * random.uniform(0.8, 1.2)


def _describe(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
