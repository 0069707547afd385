"""containers-registries.conf(5), version 2: where an image is pulled from (pure: parsing and matching).

The file CRI-O, podman and skopeo share, so a node set up for them needs nothing new::

    unqualified-search-registries = ["docker.io", "quay.io"]

    [[registry]]
    prefix = "docker.io"                 # which references this entry applies to (default: location)
    location = "docker.io"               # where they really live (rewrites the prefix)
    insecure = false                     # plain HTTP / unverified TLS allowed
    blocked = false                      # refuse to pull
    mirror-by-digest-only = false        # mirrors only for references by digest

    [[registry.mirror]]                  # tried in order, before location
    location = "mirror.example.com/dockerhub"
    insecure = false
    pull-from-mirror = "all"             # all | digest-only | tag-only

A prefix matches a reference whose name equals it or continues it after ``/``, ``:`` or ``@``; the longest
matching prefix wins. ``*.example.com`` matches every subdomain of example.com. A reference no entry matches
is pulled from its own registry, securely.

After the main file, every ``*.conf`` file in the ``registries.conf.d/`` directory beside it is read in lexical
order (containers-registries.conf.d(5)); each is a whole v2 file laid over what came before:

- a top-level key it sets (``unqualified-search-registries``, ``short-name-mode``) replaces the earlier value;
- a ``[[registry]]`` entry replaces, in place, the earlier entry with the same prefix; other entries are appended;
- ``[aliases]`` merge key by key.

Then the aliases of ``short-name-aliases.conf`` (containers-registries.conf(5): ``[aliases]`` only; podman
records its users' choices there) are laid over those, taking precedence as in containers/image.

Short names (:meth:`RegistriesConf.resolve`) follow ``short-name-mode``: an alias (a key is a name without
registry, tag or digest; a value a fully qualified name without tag or digest) decides alone; otherwise the
unqualified-search registries are the candidates, docker.io when none are set (as the kubelet expects). With
more than one, ``enforcing`` (the default) refuses the name as ambiguous, since a daemon has no terminal to
ask on and the first registry to answer would win (name squatting); ``permissive`` and ``disabled`` try
them all in order.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moorage.errors import ConfigError, FailedPrecondition, MoorageError
from moorage.images.reference import DEFAULT_DOMAIN, Reference, is_qualified, parse

if TYPE_CHECKING:
    from moorage.config import Config

PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")
SHORT_NAME_MODES = ("enforcing", "permissive", "disabled")


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True)
class Registry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """One place to try: the reference rewritten for it, and whether plain HTTP is allowed there."""

    reference: Reference
    insecure: bool
    mirror: bool


@dataclass(frozen=True)
class RegistriesConf:
    registries: tuple[Registry, ...] = ()
    unqualified_search_registries: tuple[str, ...] = ()
    short_name_mode: str = "enforcing"
    aliases: dict[str, str] = field(default_factory=dict)

    def find(self, ref: Reference) -> Registry | None:
        """The entry with the longest prefix matching ``ref``, if any."""
        best: Registry | None = None
        best_len = -1
        for registry in self.registries:
            length = _match_length(registry.prefix, ref)
            if length > best_len:
                best, best_len = registry, length
        return best

    def endpoints(self, ref: Reference) -> list[Endpoint]:
        """Where to pull ``ref`` from, in order: the applicable mirrors, then the primary location."""
        registry = self.find(ref)
        if registry is None:
            return [Endpoint(ref, insecure=False, mirror=False)]
        if registry.blocked:
            raise FailedPrecondition(f"registry {registry.prefix!r} is blocked in registries.conf; cannot pull {ref}")
        out = []
        by_digest = bool(ref.digest)
        if by_digest or not registry.mirror_by_digest_only:
            for m in registry.mirrors:
                if (m.pull_from_mirror == "digest-only" and not by_digest) or (
                    m.pull_from_mirror == "tag-only" and by_digest
                ):
                    continue
                out.append(Endpoint(_rewrite(ref, registry.prefix, m.location), m.insecure, mirror=True))
        out.append(Endpoint(_rewrite(ref, registry.prefix, registry.location), registry.insecure, mirror=False))
        return out

    def resolve(self, text: str, *, pulling: bool = True) -> list[Reference]:
        """The fully qualified references a name may mean, in the order to try them (see the module doc).

        ``pulling=False`` (finding an image already on the node) never refuses an ambiguous name."""
        if is_qualified(text):
            return [parse(text)]
        bare = text.partition("@")[0].partition(":")[0]  # a short name has no registry: ':' can only start a tag
        parse(text)  # a malformed name is INVALID_ARGUMENT before anything else
        alias = self.aliases.get(bare)
        if alias is not None:
            return [parse(alias + text[len(bare) :])]
        search = self.unqualified_search_registries or (DEFAULT_DOMAIN,)
        if pulling and len(search) > 1 and self.short_name_mode == "enforcing":
            raise FailedPrecondition(
                f"short name {text!r} is ambiguous: it could be pulled from any of the unqualified-search "
                f"registries {', '.join(search)} and short-name-mode is enforcing; use a fully qualified name "
                "or add an alias in registries.conf"
            )
        return [parse(text, default_domain=domain) for domain in search]

    def insecure(self, domain: str) -> bool:
        registry = self.find(Reference(domain, "x"))
        return bool(registry and registry.insecure)


def _match_length(prefix: str, ref: Reference) -> int:
    """How specific a match ``prefix`` is for ``ref`` (its length), or -1 when it does not match."""
    if prefix.startswith("*."):
        suffix = prefix[1:]
        return len(prefix) if ref.domain.endswith(suffix) and ref.domain != suffix.lstrip(".") else -1
    text = str(ref)
    if text == prefix or (text.startswith(prefix) and text[len(prefix)] in "/:@"):
        return len(prefix)
    return -1


def _rewrite(ref: Reference, prefix: str, location: str) -> Reference:
    if prefix.startswith("*.") or prefix == location:
        return ref
    rest = str(ref)[len(prefix) :]
    return parse(location + rest)


def load_registries(config: Config) -> RegistriesConf:
    """registries.conf with its drop-ins and the short-name-aliases.conf the config names."""
    return load(config.registries_conf, config.short_name_aliases or None)


def candidates(text: str, conf: RegistriesConf, *, pulling: bool = False) -> list[Reference]:
    """The fully qualified references a name may mean, in the order to try them."""
    return conf.resolve(text, pulling=pulling)


def load(path: str | Path, aliases_path: str | Path | None = None) -> RegistriesConf:
    """Read a registries.conf, then the drop-ins in ``registries.conf.d/`` beside it, then ``aliases_path``.

    A missing file or directory means no settings. Errors name the file and the key.
    """
    path = Path(path)
    table = _read(path)
    conf = RegistriesConf() if table is None else parse_table(table, str(path))
    for dropin in _dropins(path.parent / "registries.conf.d"):
        table = _read(dropin)
        if table is not None:
            conf = _overlay(conf, parse_table(table, str(dropin)), set(table))
    table = _read(Path(aliases_path)) if aliases_path else None
    if table is not None:
        unknown = set(table) - {"aliases"}
        if unknown:
            raise ConfigError(f"{aliases_path}: {sorted(unknown)[0]}: unknown key (only [aliases] belongs here)")
        cached = _aliases(table.get("aliases", {}), str(aliases_path))
        conf = RegistriesConf(
            conf.registries, conf.unqualified_search_registries, conf.short_name_mode, {**conf.aliases, **cached}
        )
    return conf


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read registries config: {exc}") from exc


def _dropins(directory: Path) -> list[Path]:
    """The ``*.conf`` files in ``directory`` in lexical order; other files and subdirectories are ignored."""
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.name.endswith(".conf") and e.is_file()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot read registries drop-in directory: {exc}") from exc
    return [directory / name for name in sorted(names)]


def _overlay(base: RegistriesConf, layer: RegistriesConf, keys: set[str]) -> RegistriesConf:
    """``layer`` (parsed from a table with top-level ``keys``) laid over ``base``."""
    search = layer if "unqualified-search-registries" in keys else base
    return RegistriesConf(
        registries=_merge_registries(base.registries, layer.registries),
        unqualified_search_registries=search.unqualified_search_registries,
        short_name_mode=layer.short_name_mode if "short-name-mode" in keys else base.short_name_mode,
        aliases={**base.aliases, **layer.aliases},
    )


def _merge_registries(base: tuple[Registry, ...], layer: tuple[Registry, ...]) -> tuple[Registry, ...]:
    """``layer``'s entries take the place of ``base``'s with the same prefix; entries with new prefixes go last."""
    incoming: dict[str, list[Registry]] = {}
    for registry in layer:
        incoming.setdefault(registry.prefix, []).append(registry)
    replaced = set(incoming)
    out: list[Registry] = []
    for registry in base:
        if registry.prefix not in replaced:
            out.append(registry)
        elif registry.prefix in incoming:
            out.extend(incoming.pop(registry.prefix))
    for group in incoming.values():
        out.extend(group)
    return tuple(out)


def parse_table(table: dict[str, Any], source: str) -> RegistriesConf:
    known = {"unqualified-search-registries", "registry", "short-name-mode", "aliases", "credential-helpers"}
    for key in table:
        if key not in known:
            raise ConfigError(f"{source}: {key}: unknown key (registries.conf v2; v1 [registries.search] is not read)")
    search = _strings(table.get("unqualified-search-registries", []), source, "unqualified-search-registries")
    mode = table.get("short-name-mode", "enforcing")
    if mode not in SHORT_NAME_MODES:
        raise ConfigError(f"{source}: short-name-mode: must be one of {', '.join(SHORT_NAME_MODES)}; got {mode!r}")
    aliases = _aliases(table.get("aliases", {}), source)
    entries = table.get("registry", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: registry: expected [[registry]] tables")
    registries = tuple(_registry(entry, source, i) for i, entry in enumerate(entries))
    return RegistriesConf(registries, tuple(search), mode, dict(aliases))


def _aliases(table: Any, source: str) -> dict[str, str]:
    """``[aliases]``: short name → fully qualified name, neither with a tag or digest (as containers/image)."""
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigError(f"{source}: aliases: expected a table of strings")
    for name, value in table.items():
        where = f"{source}: aliases.{name}"
        if is_qualified(name) or any(c in name for c in ":@") or not _valid(name):
            raise ConfigError(f"{where}: the key must be a short name without registry, tag or digest")
        if not is_qualified(value) or "@" in value or ":" in value.partition("/")[2] or not _valid(value):
            raise ConfigError(f"{where}: {value!r} must be a fully qualified name without tag or digest")
    return dict(table)


def _valid(name: str) -> bool:
    try:
        parse(name if is_qualified(name) else f"example.com/{name}")
    except MoorageError:
        return False
    return True


def _registry(entry: Any, source: str, index: int) -> Registry:
    where = f"{source}: registry[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    allowed = {"prefix", "location", "insecure", "blocked", "mirror-by-digest-only", "mirror"}
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key")
    location = _string(entry.get("location", ""), where, "location")
    prefix = _string(entry.get("prefix", location), where, "prefix")
    if not prefix:
        raise ConfigError(f"{where}: needs a prefix or a location")
    if prefix.startswith("*.") and location:
        raise ConfigError(f"{where}: a wildcard prefix {prefix!r} cannot have a location")
    mirrors = []
    for j, m in enumerate(entry.get("mirror", [])):
        mwhere = f"{where}.mirror[{j}]"
        if not isinstance(m, dict):
            raise ConfigError(f"{mwhere}: expected a table")
        for key in m:
            if key not in {"location", "insecure", "pull-from-mirror"}:
                raise ConfigError(f"{mwhere}.{key}: unknown key")
        pull = m.get("pull-from-mirror", "all")
        if pull not in PULL_FROM_MIRROR:
            raise ConfigError(f"{mwhere}.pull-from-mirror: must be one of {', '.join(PULL_FROM_MIRROR)}; got {pull!r}")
        mlocation = _string(m.get("location", ""), mwhere, "location")
        if not mlocation:
            raise ConfigError(f"{mwhere}.location: required")
        mirrors.append(Mirror(mlocation, _bool(m.get("insecure", False), mwhere, "insecure"), pull))
    return Registry(
        prefix=prefix,
        location=location or prefix,
        insecure=_bool(entry.get("insecure", False), where, "insecure"),
        blocked=_bool(entry.get("blocked", False), where, "blocked"),
        mirror_by_digest_only=_bool(entry.get("mirror-by-digest-only", False), where, "mirror-by-digest-only"),
        mirrors=tuple(mirrors),
    )


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
    return value


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _strings(value: Any, source: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key}: expected a list of strings")
    return value
