"""Image references as the kubelet and docker write them, parsed and normalized (pure; no I/O).

    busybox                              → docker.io/library/busybox:latest
    quay.io/coreos/etcd:v3.5             → quay.io/coreos/etcd:v3.5
    localhost:5000/app@sha256:<64 hex>   → localhost:5000/app@sha256:<64 hex>
    registry.k8s.io/pause:3.10@sha256:…  → tag and digest both kept; the digest decides what is pulled

The grammar is the distribution project's: a name is an optional domain (a first component holding ``.`` or
``:``, or ``localhost``) and lower-case path components; a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a
digest is ``algorithm:hex``. Anything else is :class:`~moorage.errors.InvalidArgument` naming what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moorage.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = ("index.docker.io", "registry-1.docker.io")
OFFICIAL_PREFIX = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class Reference:
    """A fully qualified reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path``: the repository, as repo tags and repo digests begin."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        return self.name + self._suffix()

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def repo_tag(self) -> str:
        """``name:tag``, the form ImageStatus lists in repo_tags (empty when there is no tag)."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, self.tag, validate_digest(digest))

    def familiar(self) -> str:
        """The short form people type: ``busybox:latest``, ``quay.io/x/y:1``."""
        if self.domain != DEFAULT_DOMAIN:
            return str(self)
        path = self.path.removeprefix(f"{OFFICIAL_PREFIX}/") if self.path.count("/") == 1 else self.path
        return path + self._suffix()


def is_qualified(text: str) -> bool:
    """Whether ``text`` names its registry (``quay.io/x``, ``localhost/x``) rather than being a short name."""
    first, sep, _ = text.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def parse(text: str, *, default_domain: str = DEFAULT_DOMAIN) -> Reference:
    """Parse and normalize ``text``; a name with neither tag nor digest gets ``:latest``."""
    if not text:
        raise InvalidArgument("image reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidArgument(f"image reference {text!r} contains white space")
    rest, at, digest = text.partition("@")
    if at:
        validate_digest(digest, text)
    name, tag = _split_tag(rest)
    if tag is not None and not _TAG.fullmatch(tag):
        raise InvalidArgument(f"image reference {text!r}: invalid tag {tag!r}")
    domain, path = _split_domain(name, default_domain)
    if domain != "localhost" and not _DOMAIN.fullmatch(domain):
        raise InvalidArgument(f"image reference {text!r}: invalid registry {domain!r}")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            hint = " (repository names must be lower-case)" if component.lower() != component else ""
            raise InvalidArgument(f"image reference {text!r}: invalid repository component {component!r}{hint}")
    if len(f"{domain}/{path}") > MAX_NAME_LENGTH:
        raise InvalidArgument(f"image reference {text!r}: repository name longer than {MAX_NAME_LENGTH}")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag or "", digest)


def validate_digest(digest: str, reference: str = "") -> str:
    where = f"image reference {reference!r}: " if reference else ""
    if not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"{where}invalid digest {digest!r} (expected algorithm:hex)")
    algorithm, _, hex_part = digest.partition(":")
    expected = _HEX_LENGTHS.get(algorithm)
    if expected is not None and (len(hex_part) != expected or not re.fullmatch(r"[a-f0-9]+", hex_part)):
        raise InvalidArgument(f"{where}invalid {algorithm} digest: expected {expected} lower-case hex digits")
    return digest


def _split_tag(name: str) -> tuple[str, str | None]:
    """The tag is after the last ':' that comes after the last '/' (a ':' before it is a port)."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, None


def _split_domain(name: str, default_domain: str) -> tuple[str, str]:
    if not name:
        raise InvalidArgument("image reference has an empty repository name")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = default_domain, name
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"{OFFICIAL_PREFIX}/{path}"
    if not path:
        raise InvalidArgument(f"image reference {name!r} has an empty repository path")
    return domain, path
