"""A client for one registry endpoint, speaking the OCI distribution API over httpx.

It fetches manifests and blobs of one repository, answers ``Basic`` and ``Bearer`` challenges (fetching and
caching tokens per scope), retries with backoff on 429, 5xx and dropped connections (honouring
``Retry-After``), resumes a blob download with ``Range`` where it stopped, and follows redirects to blob
storage (httpx drops the Authorization header when a redirect leaves the registry's origin).

Security rules kept here:

- **Scheme per endpoint and per pull.** A client is made for one endpoint of one pull. It speaks HTTPS; only
  an endpoint marked insecure may fall back to plain HTTP, and only when HTTPS fails there during this pull.
  Nothing is remembered across pulls or endpoints, so a host used insecurely (as a mirror, say) is still
  HTTPS-only where it is not marked insecure, and a transient failure does not pin a host to HTTP.
- **TLS per host** from certs.d (:mod:`moorage.images.certs`): extra CAs and a client certificate.
- **Token realms** are checked before any credential goes there (:func:`moorage.images.auth.realm_problem`).
- **Error bodies** of registries and token servers are echoed only as a short, sanitised excerpt.

HTTP failures become MoorageErrors here, so callers above see NOT_FOUND, UNAUTHENTICATED, ... with the
endpoint in the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.cookiejar
import random
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog

from moorage.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    InvalidImage,
    MoorageError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from moorage.images import auth, certs
from moorage.images import manifest as mf
from moorage.images.auth import Credentials, parse_challenges
from moorage.images.content import Ingest

log = structlog.get_logger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 10.0
CHUNK = 256 << 10
EXCERPT_CHARS = 160
SMALL_BODY_MAX = 64 << 10
"""Most bytes read of an error's or a token server's answer."""
VERIFIABLE_DIGESTS = ("sha256", "sha384", "sha512")
"""The algorithms a manifest named by digest is checked with (the OCI image spec's registered ones)."""
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|.)")
TRANSPORT_ERRORS = (httpx.TransportError, ssl.SSLError)
"""A refused TLS handshake (a client certificate the server rejects) can surface as a bare SSLError on read."""


class HttpClients:
    """The shared connection pools, one per TLS setting: verifying or not, and each host's certs.d contents."""

    def __init__(self, read_timeout: float | None, certs_dirs: Callable[[], tuple[str, ...]]) -> None:
        self.read_timeout = read_timeout
        self.certs_dirs = certs_dirs
        self._clients: dict[tuple[bool, certs.HostCerts | None], httpx.AsyncClient] = {}

    @classmethod
    def create(cls, read_timeout: float | None, certs_dirs: Callable[[], tuple[str, ...]] = tuple) -> HttpClients:
        return cls(read_timeout, certs_dirs)

    def for_host(self, host: str, *, verify: bool) -> httpx.AsyncClient:
        """A client for ``host``: the node's CA store (where operators add private CAs) plus the host's certs.d
        CAs, and its client certificate; ``verify=False`` only for endpoints marked insecure."""
        host_certs = certs.find(self.certs_dirs(), host)
        key = (verify, host_certs)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                # No cookie is ever kept: the client is shared by every pull over this TLS setting, whatever its
                # credentials, and a registry's session cookie would carry one pull's authorisation to the next.
                cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
                verify=certs.context(host_certs, verify=verify),
                timeout=httpx.Timeout(30.0, read=self.read_timeout),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                follow_redirects=True,
                trust_env=False,
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


@dataclass(frozen=True)
class ManifestBody:
    """A manifest or index as the registry sent it, with its media type and digest."""

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
        self._client = http.for_host(host, verify=not insecure)
        self._scheme: str | None = None  # decided on the first request of this client, i.e. per endpoint and pull

    # --- the distribution API -------------------------------------------------------------------------------

    async def manifest(self, reference: str) -> ManifestBody:
        """The manifest or index ``reference`` (a tag or a digest) names, verified when named by digest."""
        where = f"{self.host}/{self.repository}:{reference}"
        algorithm = reference.partition(":")[0] if ":" in reference else None  # a tag has no ":"
        if algorithm is not None and algorithm not in VERIFIABLE_DIGESTS:
            raise InvalidArgument(
                f"image {where}: a digest of algorithm {algorithm!r} cannot be verified (one of "
                f"{', '.join(VERIFIABLE_DIGESTS)})"
            )
        headers = {"Accept": mf.ACCEPT}
        response = await self._request("GET", f"manifests/{reference}", headers, what=f"manifest {where}")
        try:
            body = await _read_capped(response, mf.MAX_MANIFEST_BYTES, f"manifest of {where}")
        finally:
            await response.aclose()
        if algorithm is not None and f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}" != reference:
            raise DataLoss(f"manifest {where}: the registry sent content that does not hash to that digest")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return ManifestBody(body, response.headers.get("content-type", ""), digest)

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
            except TRANSPORT_ERRORS as exc:
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
            except TRANSPORT_ERRORS as exc:
                attempt += 1
                if attempt >= self.retries:
                    raise Unavailable(f"{what}: {_describe(exc)} ({attempt} attempts)") from None
                await asyncio.sleep(_backoff(attempt))
                continue
            status = response.status_code
            if status < 300:
                return response
            response = await _small(response)
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
        """https://host; http://host only for an endpoint marked insecure whose HTTPS failed in this pull."""
        if self._scheme is None:
            self._scheme = "https"
            if self.insecure:
                try:
                    probe = self._client.build_request("GET", f"https://{self.host}/v2/", timeout=10.0)
                    await _small(await self._client.send(probe, stream=True))
                except TRANSPORT_ERRORS as exc:
                    log.info(
                        "insecure registry does not answer HTTPS; using HTTP", host=self.host, error=_describe(exc)
                    )
                    self._scheme = "http"
        return f"{self._scheme}://{self.host}"

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
        problem = await auth.realm_problem(realm, registry_scheme=self._scheme or "https", registry_host=self.host)
        if problem:
            raise FailedPrecondition(f"{what}: registry {self.host} names token realm {_excerpt(realm)}: {problem}")
        scope = params.get("scope") or f"repository:{self.repository}:pull"
        query = {"scope": scope, **({"service": params["service"]} if "service" in params else {})}
        creds = self.credentials
        try:
            if creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "moorage"}
                request = self._client.build_request("POST", realm, data={**form, **query})
            else:
                headers = {"Authorization": creds.basic()} if (creds.username or creds.password) else {}
                request = self._client.build_request("GET", realm, params=query, headers=headers)
            response = await _small(await self._client.send(request, stream=True, follow_redirects=False))
        except TRANSPORT_ERRORS as exc:
            raise Unavailable(f"{what}: token server {_excerpt(realm)}: {_describe(exc)}") from None
        if response.status_code in (401, 403):
            who = f"the credentials of {creds.username!r}" if creds else "anonymous access"
            raise Unauthenticated(f"{what}: token server {_excerpt(realm)} refused {who} ({_status(response)})")
        if response.status_code >= 300:
            raise Unavailable(f"{what}: token server {_excerpt(realm)} answered {_status(response)}")
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unauthenticated(f"{what}: token server {_excerpt(realm)} returned no token")
        return token


async def _small(response: httpx.Response) -> httpx.Response:
    """A streamed answer that is not content (an error, a token) read whole, if at most :data:`SMALL_BODY_MAX`
    bytes as they came (more are not read) and not content-encoded (an encoded one is dropped rather than
    inflated: a small gzip body can decode to gigabytes); the connection is released."""
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > SMALL_BODY_MAX:
                del body[SMALL_BODY_MAX:]
                break
    finally:
        await response.aclose()
    encoded = response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
    headers = [
        (k, v) for k, v in response.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")
    ]
    return httpx.Response(
        response.status_code, headers=headers, content=b"" if encoded else bytes(body), request=response.request
    )


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
    """``404 MANIFEST_UNKNOWN: manifest unknown``: the status with the server's own error, as a short excerpt.

    The body is the remote's text: only a bounded, printable excerpt of it reaches logs and the kubelet."""
    text = f"{response.status_code} {_excerpt(response.reason_phrase, 60)}".strip()
    try:
        doc = response.json()
    except (ValueError, httpx.ResponseNotRead):
        doc = None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return f"{response.status_code} {_excerpt(str(first.get('code', '')) + ': ' + str(first.get('message', '')))}"
    try:
        body = response.text
    except httpx.ResponseNotRead:
        body = ""
    return f"{text}: {_excerpt(body)}" if body.strip() else text


def _excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` with control and other unprintable characters dropped, whitespace collapsed, cut to ``limit``."""
    text = _ANSI_ESCAPE.sub("", text[: limit * 4])
    clean = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return min(float(value), MAX_BACKOFF_SECONDS) if value.isdigit() else None


def _backoff(attempt: int) -> float:
    return float(min(0.25 * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)) * random.uniform(0.8, 1.2)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
