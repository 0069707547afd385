from __future__ import annotations

from pathlib import Path

import pytest

from moorage.errors import ConfigError, FailedPrecondition
from moorage.images import registries_conf
from moorage.images.reference import parse

SHA = "sha256:" + "b" * 64

CONF = """
unqualified-search-registries = ["docker.io", "quay.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "127.0.0.1:5000/hub"
insecure = true

[[registry.mirror]]
location = "mirror.example.com/pinned"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "docker.io/library/private"
location = "registry.internal:5000/private"
insecure = true

[[registry]]
location = "localhost:5000"
insecure = true

[[registry]]
prefix = "quay.io/evil"
blocked = true

[[registry]]
prefix = "*.corp.example.com"
insecure = true

[[registry]]
prefix = "gcr.io"
mirror-by-digest-only = true

[[registry.mirror]]
location = "gcr-mirror.example.com"
"""


@pytest.fixture
def conf(tmp_path: Path) -> registries_conf.RegistriesConf:
    path = tmp_path / "registries.conf"
    path.write_text(CONF)
    return registries_conf.load(path)


def where(conf: registries_conf.RegistriesConf, ref: str) -> list[tuple[str, bool, bool]]:
    return [(str(e.reference), e.insecure, e.mirror) for e in conf.endpoints(parse(ref))]


def test_mirrors_come_first_then_the_location(conf: registries_conf.RegistriesConf) -> None:
    assert where(conf, "busybox") == [
        ("127.0.0.1:5000/hub/library/busybox:latest", True, True),
        ("docker.io/library/busybox:latest", False, False),
    ]
    assert where(conf, f"busybox@{SHA}") == [
        (f"127.0.0.1:5000/hub/library/busybox@{SHA}", True, True),
        (f"mirror.example.com/pinned/library/busybox@{SHA}", False, True),
        (f"docker.io/library/busybox@{SHA}", False, False),
    ]


def test_longest_prefix_wins_and_rewrites(conf: registries_conf.RegistriesConf) -> None:
    # "private/app" is docker.io/private/app: under the docker.io entry, not docker.io/library/private
    assert where(conf, "private/app:1")[-1] == ("docker.io/private/app:1", False, False)
    assert where(conf, "library/private/app:1") == [("registry.internal:5000/private/app:1", True, False)]
    assert where(conf, "docker.io/library/privateer:1")[-1] == ("docker.io/library/privateer:1", False, False)


def test_insecure_location_and_wildcards(conf: registries_conf.RegistriesConf) -> None:
    assert where(conf, "localhost:5000/app") == [("localhost:5000/app:latest", True, False)]
    assert where(conf, "build.corp.example.com/x/y:2") == [("build.corp.example.com/x/y:2", True, False)]
    assert where(conf, "corp.example.com/x") == [("corp.example.com/x:latest", False, False)]
    assert conf.insecure("localhost:5000")
    assert not conf.insecure("quay.io")


def test_unlisted_registries_are_used_securely_as_they_are(conf: registries_conf.RegistriesConf) -> None:
    assert where(conf, "registry.k8s.io/pause:3.10") == [("registry.k8s.io/pause:3.10", False, False)]


def test_blocked_registry_is_refused(conf: registries_conf.RegistriesConf) -> None:
    with pytest.raises(FailedPrecondition, match="blocked"):
        conf.endpoints(parse("quay.io/evil/thing"))
    assert where(conf, "quay.io/good/thing") == [("quay.io/good/thing:latest", False, False)]


def test_mirror_by_digest_only(conf: registries_conf.RegistriesConf) -> None:
    assert where(conf, "gcr.io/p/img:1") == [("gcr.io/p/img:1", False, False)]
    assert where(conf, f"gcr.io/p/img@{SHA}")[0] == (f"gcr-mirror.example.com/p/img@{SHA}", False, True)


def test_search_registries_and_missing_file(conf: registries_conf.RegistriesConf, tmp_path: Path) -> None:
    assert conf.unqualified_search_registries == ("docker.io", "quay.io")
    assert registries_conf.load(tmp_path / "absent.conf") == registries_conf.RegistriesConf()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[registries.search]\nregistries = []\n", "registries: unknown key"),
        ("[[registry]]\nprefix = 'a.io'\nsecure = true\n", "registry[0].secure: unknown key"),
        ("[[registry]]\nlocation = 'a.io'\ninsecure = 'yes'\n", "registry[0].insecure: expected true or false"),
        ("[[registry]]\ninsecure = true\n", "registry[0]: needs a prefix or a location"),
        ("[[registry]]\nprefix = '*.a.io'\nlocation = 'b.io'\n", "wildcard prefix"),
        (
            "[[registry]]\nlocation='a.io'\n[[registry.mirror]]\nlocation='m.io'\npull-from-mirror='some'\n",
            "registry[0].mirror[0].pull-from-mirror: must be one of",
        ),
        ("short-name-mode = 'lax'\n", "short-name-mode: must be one of"),
        ("unqualified-search-registries = 'docker.io'\n", "unqualified-search-registries: expected a list"),
        ("x = [\n", "cannot read registries config"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        registries_conf.load(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


MAIN = """
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"

[aliases]
"busybox" = "docker.io/library/busybox"
"pause" = "registry.k8s.io/pause"

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "old-mirror.example.com/hub"

[[registry]]
location = "quay.io"
"""


def with_dropins(tmp_path: Path, **dropins: str) -> Path:
    """A registries.conf (MAIN) plus drop-ins named by keyword (``a="..."`` is registries.conf.d/a.conf)."""
    directory = tmp_path / "registries.conf.d"
    directory.mkdir(parents=True)
    path = tmp_path / "registries.conf"
    path.write_text(MAIN)
    for name, text in dropins.items():
        (directory / f"{name}.conf").write_text(text)
    return path


def test_dropin_replaces_the_top_level_keys_it_sets(tmp_path: Path) -> None:
    conf = registries_conf.load(with_dropins(tmp_path, a='unqualified-search-registries = ["quay.io", "ghcr.io"]\n'))
    assert conf.unqualified_search_registries == ("quay.io", "ghcr.io")
    assert conf.short_name_mode == "permissive"  # not set in the drop-in: kept
    conf = registries_conf.load(with_dropins(tmp_path / "2", a="short-name-mode = 'disabled'\n"))
    assert conf.unqualified_search_registries == ("docker.io",)
    assert conf.short_name_mode == "disabled"
    conf = registries_conf.load(with_dropins(tmp_path / "3", a="unqualified-search-registries = []\n"))
    assert conf.unqualified_search_registries == ()


def test_dropin_registry_replaces_the_one_with_its_prefix(tmp_path: Path) -> None:
    dropin = '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
    dropin += '[[registry.mirror]]\nlocation = "new-mirror.example.com/hub"\n'
    conf = registries_conf.load(with_dropins(tmp_path, a=dropin))
    assert [r.prefix for r in conf.registries] == ["docker.io", "quay.io"]
    assert where(conf, "busybox") == [
        ("new-mirror.example.com/hub/library/busybox:latest", False, True),
        ("docker.io/library/busybox:latest", False, False),
    ]


def test_dropin_prefix_defaults_to_location(tmp_path: Path) -> None:
    conf = registries_conf.load(with_dropins(tmp_path, a='[[registry]]\nlocation = "quay.io"\nblocked = true\n'))
    assert [r.prefix for r in conf.registries] == ["docker.io", "quay.io"]
    with pytest.raises(FailedPrecondition, match="blocked"):
        conf.endpoints(parse("quay.io/app"))


def test_dropin_registry_with_a_new_prefix_is_added(tmp_path: Path) -> None:
    conf = registries_conf.load(
        with_dropins(tmp_path, a='[[registry]]\nlocation = "localhost:5000"\ninsecure = true\n')
    )
    assert [r.prefix for r in conf.registries] == ["docker.io", "quay.io", "localhost:5000"]
    assert conf.insecure("localhost:5000")
    assert where(conf, "busybox")[0] == ("old-mirror.example.com/hub/library/busybox:latest", False, True)


def test_dropin_aliases_merge_key_by_key(tmp_path: Path) -> None:
    dropin = '[aliases]\n"pause" = "mirror.example.com/pause"\n"nginx" = "docker.io/library/nginx"\n'
    conf = registries_conf.load(with_dropins(tmp_path, a=dropin))
    assert conf.aliases == {
        "busybox": "docker.io/library/busybox",
        "pause": "mirror.example.com/pause",
        "nginx": "docker.io/library/nginx",
    }


def test_dropins_apply_in_lexical_order_and_only_conf_files(tmp_path: Path) -> None:
    path = with_dropins(
        tmp_path,
        b='unqualified-search-registries = ["b.io"]\n',
        a='unqualified-search-registries = ["a.io"]\nshort-name-mode = "enforcing"\n',
        **{"10-first": "short-name-mode = 'disabled'\n"},
    )
    (tmp_path / "registries.conf.d" / "z.conf.bak").write_text("not toml [\n")
    (tmp_path / "registries.conf.d" / "sub.conf").mkdir()
    conf = registries_conf.load(path)
    assert conf.unqualified_search_registries == ("b.io",)
    assert conf.short_name_mode == "enforcing"  # a.conf after 10-first.conf


def test_dropins_apply_without_a_main_file(tmp_path: Path) -> None:
    path = with_dropins(tmp_path, a='unqualified-search-registries = ["quay.io"]\n')
    path.unlink()
    assert registries_conf.load(path) == registries_conf.RegistriesConf(unqualified_search_registries=("quay.io",))


def test_missing_dropin_directory_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "registries.conf"
    path.write_text(MAIN)
    conf = registries_conf.load(path)
    assert conf.unqualified_search_registries == ("docker.io",)
    assert [r.prefix for r in conf.registries] == ["docker.io", "quay.io"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[registry]]\nlocation = 'a.io'\ninsecure = 'yes'\n", "registry[0].insecure: expected true or false"),
        ("short-name-mode = 'lax'\n", "short-name-mode: must be one of"),
        ("x = [\n", "cannot read registries config"),
    ],
)
def test_bad_dropin_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = with_dropins(tmp_path, a="short-name-mode = 'disabled'\n", b=text)
    with pytest.raises(ConfigError) as err:
        registries_conf.load(path)
    assert str(err.value).startswith(str(tmp_path / "registries.conf.d" / "b.conf") + ":")
    assert message in str(err.value)


def test_dropin_path_that_is_not_a_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "registries.conf"
    path.write_text(MAIN)
    (tmp_path / "registries.conf.d").write_text("")
    with pytest.raises(ConfigError, match="cannot read registries drop-in directory"):
        registries_conf.load(path)


# --- short names (issue 12) ---------------------------------------------------------------------------------


def _conf(tmp_path: Path, text: str, aliases: str | None = None) -> registries_conf.RegistriesConf:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    alias_path = tmp_path / "short-name-aliases.conf"
    if aliases is not None:
        alias_path.write_text(aliases)
    return registries_conf.load(path, alias_path)


SEARCH = 'unqualified-search-registries = ["quay.io", "docker.io"]\n'


def test_an_ambiguous_short_name_is_refused_when_enforcing(tmp_path: Path) -> None:
    conf = _conf(tmp_path, SEARCH)
    with pytest.raises(FailedPrecondition, match=r"ambiguous.*quay\.io, docker\.io.*enforcing"):
        conf.resolve("busybox:1")
    # looking up what is already on the node is not a pull: every candidate
    assert [str(r) for r in conf.resolve("busybox:1", pulling=False)] == [
        "quay.io/busybox:1",
        "docker.io/library/busybox:1",
    ]
    # one search registry (or none: docker.io) is no ambiguity; a qualified name never is
    assert [str(r) for r in _conf(tmp_path, 'unqualified-search-registries = ["quay.io"]\n').resolve("x")] == [
        "quay.io/x:latest"
    ]
    assert [str(r) for r in _conf(tmp_path, "").resolve("x")] == ["docker.io/library/x:latest"]
    assert [str(r) for r in conf.resolve("ghcr.io/x")] == ["ghcr.io/x:latest"]


@pytest.mark.parametrize("mode", ["permissive", "disabled"])
def test_permissive_and_disabled_try_every_search_registry(tmp_path: Path, mode: str) -> None:
    conf = _conf(tmp_path, f'short-name-mode = "{mode}"\n' + SEARCH)
    assert [r.domain for r in conf.resolve("busybox")] == ["quay.io", "docker.io"]


def test_aliases_decide_and_the_alias_file_wins(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        SEARCH + '[aliases]\n"busybox" = "quay.io/lib/busybox"\n"nginx" = "docker.io/library/nginx"\n',
        '[aliases]\n"busybox" = "registry.example.com/busybox"\n',
    )
    assert [str(r) for r in conf.resolve("busybox:1.36")] == ["registry.example.com/busybox:1.36"]
    assert [str(r) for r in conf.resolve(f"nginx@{SHA}")] == [f"docker.io/library/nginx@{SHA}"]


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ('"quay.io/x" = "quay.io/x"', "the key must be a short name"),
        ('"x:1" = "quay.io/x"', "the key must be a short name"),
        ('"x" = "x"', "must be a fully qualified name"),
        ('"x" = "quay.io/x:1"', "must be a fully qualified name without tag"),
        (f'"x" = "quay.io/x@{SHA}"', "without tag or digest"),
    ],
)
def test_bad_aliases_are_refused(tmp_path: Path, aliases: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _conf(tmp_path, f"[aliases]\n{aliases}\n")
    with pytest.raises(ConfigError, match=message):
        _conf(tmp_path, "", f"[aliases]\n{aliases}\n")


def test_the_alias_file_holds_aliases_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"short-name-aliases\.conf: unqualified-search-registries: unknown key"):
        _conf(tmp_path, "", 'unqualified-search-registries = ["x.io"]\n')
