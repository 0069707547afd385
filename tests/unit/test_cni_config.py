"""CNI network config loading: which file is the network, list vs single plugin, every broken-file case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moorage.errors import FailedPrecondition
from moorage.node.cni.config import (
    CniConfigError,
    NetworkConfig,
    find_plugin,
    load_network,
    parse_network,
    with_pod_cidrs,
)

BRIDGE = {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}}


def write(directory: Path, name: str, doc: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def conflist(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"cniVersion": "1.0.0", "name": "podnet", "plugins": [BRIDGE, {"type": "portmap"}]}
    doc.update(overrides)
    return doc


def test_missing_or_empty_dir_has_no_network(tmp_path: Path) -> None:
    assert load_network(tmp_path / "absent") is None
    assert load_network(tmp_path) is None
    write(tmp_path, "README", "not a config")
    write(tmp_path, "10-net.conf.bak", conflist())
    (tmp_path / "00-dir.conflist").mkdir()
    assert load_network(tmp_path) is None


def test_conflist_is_a_plugin_list(tmp_path: Path) -> None:
    path = write(tmp_path, "10-podnet.conflist", conflist(disableCheck=True, disableGC=True))
    network = load_network(tmp_path)
    assert network == NetworkConfig(
        path=path,
        name="podnet",
        cni_version="1.0.0",
        plugins=(BRIDGE, {"type": "portmap"}),
        disable_check=True,
        disable_gc=True,
    )
    assert network.plugin_types == ("bridge", "portmap")
    assert network.as_list()["plugins"] == [BRIDGE, {"type": "portmap"}]


@pytest.mark.parametrize("name", ["10-single.conf", "10-single.json"])
def test_single_plugin_conf_is_wrapped_in_a_list(tmp_path: Path, name: str) -> None:
    single = {"cniVersion": "0.3.1", "name": "single", **BRIDGE}
    write(tmp_path, name, single)
    network = load_network(tmp_path)
    assert network is not None
    assert (network.name, network.cni_version, network.plugin_types) == ("single", "0.3.1", ("bridge",))
    assert network.plugins == (single,)
    assert not network.disable_check


def test_json_with_plugins_is_a_list(tmp_path: Path) -> None:
    write(tmp_path, "10-list.json", conflist(name="fromjson"))
    network = load_network(tmp_path)
    assert network is not None
    assert (network.name, network.plugin_types) == ("fromjson", ("bridge", "portmap"))


def test_first_file_in_lexical_order_wins_across_suffixes(tmp_path: Path) -> None:
    write(tmp_path, "20-b.conflist", conflist(name="b"))
    write(tmp_path, "30-c.conf", {"cniVersion": "1.0.0", "name": "c", "type": "bridge"})
    write(tmp_path, "10-a.json", {"cniVersion": "1.0.0", "name": "a", "type": "bridge"})
    network = load_network(tmp_path)
    assert network is not None
    assert network.name == "a"
    (tmp_path / "10-a.json").unlink()
    network = load_network(tmp_path)
    assert network is not None
    assert network.name == "b"


def test_cni_versions_picks_the_highest_supported(tmp_path: Path) -> None:
    write(tmp_path, "10.conflist", conflist(cniVersion="0.4.0", cniVersions=["0.3.1", "1.0.0", "9.9.9"]))
    network = load_network(tmp_path)
    assert network is not None
    assert network.cni_version == "1.0.0"


def test_string_flags_are_accepted(tmp_path: Path) -> None:
    write(tmp_path, "10.conflist", conflist(disableCheck="true", disableGC="False"))
    network = load_network(tmp_path)
    assert network is not None
    assert (network.disable_check, network.disable_gc) == (True, False)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("10.conflist", "{not json", "not valid JSON"),
        ("10.conflist", b"\xff\xfe", "not valid JSON"),
        ("10.conflist", "[1, 2]", "expected a JSON object, got list"),
        ("10.conflist", conflist(name=None), r"no network name \(name\)"),
        ("10.conflist", conflist(name=""), r"no network name \(name\)"),
        ("10.conflist", conflist(name="../../etc"), "may only hold letters"),
        ("10.conflist", conflist(cniVersion=None), "no cniVersion"),
        ("10.conflist", conflist(cniVersion=1), "cniVersion must be a string"),
        ("10.conflist", conflist(cniVersion="0.2.0"), "cniVersion 0.2.0 is not supported"),
        ("10.conflist", conflist(cniVersion="2.0.0"), "cniVersion 2.0.0 is not supported"),
        ("10.conflist", conflist(cniVersion=None, cniVersions=["0.1.0"]), "none of cniVersions"),
        ("10.conflist", conflist(cniVersions="1.0.0"), "cniVersions must be a list"),
        ("10.conflist", conflist(plugins=[]), "plugins must be a non-empty list"),
        ("10.conflist", conflist(plugins={"type": "bridge"}), "plugins must be a non-empty list"),
        ("10.conflist", conflist(plugins=[BRIDGE, "portmap"]), r"plugins\[1\] must be a JSON object"),
        ("10.conflist", conflist(plugins=[BRIDGE, {"bridge": "x"}]), r"plugins\[1\] has no plugin type"),
        ("10.conflist", conflist(plugins=[{"type": "../../bin/sh"}]), "is not a plugin binary name"),
        (
            "10.conflist",
            conflist(plugins=[{"type": "portmap", "capabilities": {"portMappings": "yes"}}]),
            "capabilities must map names to true/false",
        ),
        ("10.conflist", conflist(disableCheck="maybe"), "disableCheck must be true or false"),
        ("10.conflist", conflist(disableGC=1), "disableGC must be true or false"),
        ("10.conflist", {"cniVersion": "1.0.0", "name": "x", "type": "bridge"}, "a .conflist needs a plugins list"),
        ("10.conf", {"cniVersion": "1.0.0", "name": "x"}, r"plugins\[0\] has no plugin type"),
        ("10.conf", {"cniVersion": "1.0.0", "type": "bridge"}, "no network name"),
        ("10.json", {"name": "x", "type": "bridge"}, "no cniVersion"),
    ],
)
def test_broken_file_is_an_error_naming_it(tmp_path: Path, name: str, content: Any, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    write(tmp_path, "99-fine.conflist", conflist())  # a later good file does not hide the broken first one
    with pytest.raises(CniConfigError, match=message) as err:
        load_network(tmp_path)
    assert str(path) in err.value.message
    assert isinstance(err.value, FailedPrecondition)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "10.conflist", json.dumps(conflist()) + " " * (1 << 20))
    with pytest.raises(CniConfigError, match="larger than"):
        load_network(tmp_path)


def test_parse_network_is_pure() -> None:
    network = parse_network(Path("/nowhere/x.conflist"), json.dumps(conflist()).encode())
    assert network.path == Path("/nowhere/x.conflist")


def test_find_plugin_searches_dirs_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
        plugin = directory / "bridge"
        plugin.write_text("#!/bin/sh\n")
        plugin.chmod(0o755)
    (first / "portmap").write_text("not executable")
    (first / "portmap").chmod(0o644)
    (second / "portmap").write_text("#!/bin/sh\n")
    (second / "portmap").chmod(0o755)
    (first / "tuning").mkdir()

    assert find_plugin("bridge", [first, second]) == first / "bridge"
    assert find_plugin("bridge", [second, first]) == second / "bridge"
    assert find_plugin("portmap", [first, second]) == second / "portmap"  # first's copy is not executable
    assert find_plugin("portmap", [first]) is None
    assert find_plugin("tuning", [first, second]) is None
    assert find_plugin("absent", [first, second, tmp_path / "missing"]) is None
    assert find_plugin("../first/bridge", [second]) is None


def test_the_pod_cidr_fills_use_pod_cidr_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "10-pods.conflist"
    ranges = [[{"subnet": "usePodCidr"}], [{"subnet": "usePodCidrIPv6"}]]
    doc = {"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", "ipam": {"ranges": ranges}}]}
    path.write_text(json.dumps(doc))
    network = load_network(tmp_path)
    assert network is not None
    filled = with_pod_cidrs(network, ("10.244.3.0/24", "fd00:244:3::/64"))
    assert filled.plugins[0]["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:244:3::/64"}]]
    assert network.plugins[0]["ipam"]["ranges"] == ranges  # the loaded config is left as it was
    with pytest.raises(CniConfigError, match="no IPv6 pod CIDR yet"):
        with_pod_cidrs(network, ("10.244.3.0/24",))
    plain = with_pod_cidrs(filled, ())
    assert plain is filled  # nothing to fill: the same config
