from __future__ import annotations

from pathlib import Path

import pytest

from moorage.errors import ConfigError, FailedPrecondition
from moorage.images import registries
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
def conf(tmp_path: Path) -> registries.RegistriesConf:
    path = tmp_path / "registries.conf"
    path.write_text(CONF)
    return registries.load(path)


def where(conf: registries.RegistriesConf, ref: str) -> list[tuple[str, bool, bool]]:
    return [(str(e.reference), e.insecure, e.mirror) for e in conf.endpoints(parse(ref))]


def test_mirrors_come_first_then_the_location(conf: registries.RegistriesConf) -> None:
    assert where(conf, "busybox") == [
        ("127.0.0.1:5000/hub/library/busybox:latest", True, True),
        ("docker.io/library/busybox:latest", False, False),
    ]
    assert where(conf, f"busybox@{SHA}") == [
        (f"127.0.0.1:5000/hub/library/busybox@{SHA}", True, True),
        (f"mirror.example.com/pinned/library/busybox@{SHA}", False, True),
        (f"docker.io/library/busybox@{SHA}", False, False),
    ]


def test_longest_prefix_wins_and_rewrites(conf: registries.RegistriesConf) -> None:
    # "private/app" is docker.io/private/app: under the docker.io entry, not docker.io/library/private
    assert where(conf, "private/app:1")[-1] == ("docker.io/private/app:1", False, False)
    assert where(conf, "library/private/app:1") == [("registry.internal:5000/private/app:1", True, False)]
    assert where(conf, "docker.io/library/privateer:1")[-1] == ("docker.io/library/privateer:1", False, False)


def test_insecure_location_and_wildcards(conf: registries.RegistriesConf) -> None:
    assert where(conf, "localhost:5000/app") == [("localhost:5000/app:latest", True, False)]
    assert where(conf, "build.corp.example.com/x/y:2") == [("build.corp.example.com/x/y:2", True, False)]
    assert where(conf, "corp.example.com/x") == [("corp.example.com/x:latest", False, False)]
    assert conf.insecure("localhost:5000")
    assert not conf.insecure("quay.io")


def test_unlisted_registries_are_used_securely_as_they_are(conf: registries.RegistriesConf) -> None:
    assert where(conf, "registry.k8s.io/pause:3.10") == [("registry.k8s.io/pause:3.10", False, False)]


def test_blocked_registry_is_refused(conf: registries.RegistriesConf) -> None:
    with pytest.raises(FailedPrecondition, match="blocked"):
        conf.endpoints(parse("quay.io/evil/thing"))
    assert where(conf, "quay.io/good/thing") == [("quay.io/good/thing:latest", False, False)]


def test_mirror_by_digest_only(conf: registries.RegistriesConf) -> None:
    assert where(conf, "gcr.io/p/img:1") == [("gcr.io/p/img:1", False, False)]
    assert where(conf, f"gcr.io/p/img@{SHA}")[0] == (f"gcr-mirror.example.com/p/img@{SHA}", False, True)


def test_search_registries_and_missing_file(conf: registries.RegistriesConf, tmp_path: Path) -> None:
    assert conf.unqualified_search_registries == ("docker.io", "quay.io")
    assert registries.load(tmp_path / "absent.conf") == registries.RegistriesConf()


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
        registries.load(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)
