"""Registry credentials: where they come from and how a registry's challenge is answered (pure, no I/O but
reading the credential files).

A pull uses the credentials the kubelet put in the request (CRI ``AuthConfig``: username and password, a
base64 ``auth``, an identity token or a registry token); without them, the first of the configured credential
files (docker ``config.json`` / containers-auth.json(5)) that has an entry for the image's registry or
repository. A registry asks for them with a ``WWW-Authenticate`` challenge: ``Basic`` is answered with the
credentials, ``Bearer`` by fetching a token from the named realm (see :mod:`moorage.images.registry`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
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

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token or self.registry_token)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never print secrets into logs
        return f"Credentials(username={self.username!r}, secret={'***' if self else ''})"


def from_request(
    username: str = "", password: str = "", auth: str = "", identity_token: str = "", registry_token: str = ""
) -> Credentials:
    """Credentials from a CRI AuthConfig; ``auth`` is ``base64(user:password)`` as in docker's config.json."""
    if auth and not (username or password):
        username, password = _decode_auth(auth, "AuthConfig.auth")
    return Credentials(username, password, identity_token, registry_token)


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
