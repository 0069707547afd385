"""Registry credentials: where they come from, where they may go, and how a registry's challenge is answered
(pure, no I/O but reading the credential files and resolving a token realm's host).

A pull has the credentials the kubelet put in the request (CRI ``AuthConfig``: username and password, a
base64 ``auth``, an identity token or a registry token) and the configured credential files (docker
``config.json`` / containers-auth.json(5)). Each endpoint of the pull gets its own, and nobody else's:

- the request's credentials only where they were given for: ``AuthConfig.server_address`` (a host, or a
  host/repository prefix), or, when it is empty, the registry the image name itself names (docker.io for a
  short name, as the kubelet's keyring reads it). So an unqualified-search registry other than that one,
  and a mirror on another host, never see them;
- otherwise the first credential file's entry for the endpoint's own host or repository.

A registry asks for them with a ``WWW-Authenticate`` challenge: ``Basic`` is answered with the credentials,
``Bearer`` by fetching a token from the named realm (see :mod:`moorage.images.registry_client`) once
:func:`realm_problem` finds nothing wrong with it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import json
import re
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from moorage.errors import InvalidArgument
from moorage.images.reference import DEFAULT_DOMAIN, Reference

log = structlog.get_logger(__name__)

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    """An OAuth2 refresh token, exchanged at the token realm for an access token."""
    registry_token: str = ""
    """A bearer token sent to the registry as it is."""
    server_address: str = ""
    """Where the request's credentials are for (AuthConfig.server_address); empty: the image's own registry."""

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token or self.registry_token)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never print secrets into logs
        return f"Credentials(username={self.username!r}, secret={'***' if self else ''})"

    def fingerprint(self) -> str:
        """A digest of everything here, to tell pulls with different credentials apart (never stored)."""
        fields = (self.username, self.password, self.identity_token, self.registry_token, self.server_address)
        return hashlib.sha256("\0".join(fields).encode()).hexdigest() if self else ""


def from_request(  # noqa: PLR0917 - the AuthConfig fields, in its order
    username: str = "",
    password: str = "",
    auth: str = "",
    identity_token: str = "",
    registry_token: str = "",
    server_address: str = "",
) -> Credentials:
    """Credentials from a CRI AuthConfig; ``auth`` is ``base64(user:password)`` as in docker's config.json."""
    if auth and not (username or password):
        username, password = _decode_auth(auth, "AuthConfig.auth")
    return Credentials(username, password, identity_token, registry_token, server_address)


def scope(server_address: str, named: Reference) -> str:
    """``host`` or ``host/repo-prefix`` the request's credentials are for: server_address without scheme or API
    path (``https://index.docker.io/v1/`` is docker.io), else the registry of the name as requested."""
    if not server_address:
        return named.domain
    text = server_address.strip()
    text = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text).rstrip("/")
    text = re.sub(r"/v[12]$", "", text)
    host, _, rest = text.partition("/")
    host = DEFAULT_DOMAIN if host in DOCKER_HUB_KEYS else host
    return f"{host}/{rest}" if rest else host


def covers(credential_scope: str, ref: Reference) -> bool:
    """Whether credentials for ``credential_scope`` (a host or host/repo prefix) belong to ``ref``."""
    name = ref.name
    return name == credential_scope or name.startswith(credential_scope + "/")


def for_endpoint(
    request: Credentials,
    named: Reference,
    candidate: Reference,
    target: Reference,
    *,
    mirror: bool,
    auth_files: Iterable[str],
) -> Credentials:
    """The credentials one endpoint gets: the request's where they belong, else its own credential-file entry.

    ``named`` is the name as requested, ``candidate`` the registry it resolved to (a search registry or alias),
    ``target`` where this endpoint really is (a mirror, or the location registries.conf rewrites to). The
    registry itself (not a mirror) counts as where ``candidate`` is, since registries.conf says it is."""
    if request:
        where = scope(request.server_address, named)
        if covers(where, target) or (not mirror and covers(where, candidate)):
            return request
    return from_files(auth_files, target)


def from_files(paths: Iterable[str], ref: Reference) -> Credentials:
    """The credentials for ``ref`` in the first file that has an entry for it; none when no file has one."""
    for path in paths:
        auths = _read_auths(Path(path))
        for key in _lookup_keys(ref):
            entry = auths.get(key)
            if isinstance(entry, dict):
                log.debug("registry credentials found", file=path, key=key)
                return _entry_credentials(entry, f"{path}: auths.{key}")
    return Credentials()


def _lookup_keys(ref: Reference) -> list[str]:
    """Most specific first: ``host/ns/repo``, ``host/ns``, ``host``, and docker.io's historic spellings."""
    parts = ref.name.split("/")
    keys = ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
    keys += [f"https://{ref.domain}", f"http://{ref.domain}", f"https://{ref.domain}/v1/", f"https://{ref.domain}/v2/"]
    if ref.domain == DEFAULT_DOMAIN:
        keys += list(DOCKER_HUB_KEYS)
    return keys


def _read_auths(path: Path) -> dict[str, object]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("registry credential file unreadable; skipped", file=str(path), error=str(exc))
        return {}
    auths = doc.get("auths") if isinstance(doc, dict) else None
    return auths if isinstance(auths, dict) else {}


def _entry_credentials(entry: dict[str, object], where: str) -> Credentials:
    username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
    if entry.get("auth") and not (username or password):
        username, password = _decode_auth(str(entry["auth"]), where)
    return Credentials(username, password, str(entry.get("identitytoken") or ""), str(entry.get("registrytoken") or ""))


def _decode_auth(auth: str, where: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(f"{where} is not base64 of user:password") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise InvalidArgument(f"{where} decodes to no user:password pair")
    return user, password


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """``basic`` or ``bearer``, lower-cased."""
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """``WWW-Authenticate`` values → challenges; one header may carry several schemes."""
    out: list[Challenge] = []
    for header in headers:
        rest = header.strip()
        while rest:
            scheme, _, rest = rest.partition(" ")
            params: dict[str, str] = {}
            while (match := _PARAM.match(rest)) and match.group(0):
                value = match.group(2) if match.group(2) is not None else match.group(3)
                params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
                rest = rest[match.end() :]
            out.append(Challenge(scheme.strip(",").lower(), params))
            rest = rest.lstrip(", ")
    return out


async def realm_problem(realm: str, *, registry_scheme: str, registry_host: str) -> str:
    """Why a token realm a registry's challenge names must not get credentials, or "" when it may.

    Refused: a realm that is not http(s); plain http when the registry was reached over https; a link-local
    or unspecified address (cloud metadata services live there), literal or resolved; a loopback realm for a
    registry that is not itself on loopback."""
    try:
        url = urllib.parse.urlsplit(realm)
    except ValueError:
        return "not a URL"
    if url.scheme not in ("http", "https") or not url.hostname:
        return "not an http(s) URL"
    if registry_scheme == "https" and url.scheme != "https":
        return "plain http for a registry reached over https"
    addresses = await _addresses(url.hostname)
    if any(a.is_link_local or a.is_unspecified for a in addresses):
        return "a link-local address"
    if any(a.is_loopback for a in addresses):
        registry_hostname = urllib.parse.urlsplit(f"//{registry_host}").hostname or registry_host
        if not all(a.is_loopback for a in await _addresses(registry_hostname)):
            return "a loopback address, for a registry that is not on loopback"
    return ""


async def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """``host``'s IP addresses: itself if it is one, else what it resolves to (nothing if it does not)."""
    try:
        found = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            return [ipaddress.ip_address("127.0.0.1")]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []
        found = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    return [a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a for a in found]
