from __future__ import annotations

from pathlib import Path

import pytest

from moorage import config as cfg
from moorage.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_empty_file_gives_every_default(tmp_path: Path) -> None:
    config = cfg.load(write(tmp_path, ""))
    assert config == cfg.Config()
    assert config.root == "/var/lib/moorage"
    assert config.socket == "/run/moorage/moorage.sock"
    assert config.sandbox_image == "localhost/moorage/pause:1.0"
    assert config.cgroup_driver == "cgroupfs"
    assert dict(config.runtime.handlers) == {"runc": cfg.HandlerSection("runc"), "crun": cfg.HandlerSection("crun")}


def test_rendered_default_config_loads_back_to_the_defaults(tmp_path: Path) -> None:
    text = cfg.render_toml()
    assert cfg.load(write(tmp_path, text)) == cfg.Config()
    for dotted, _default, doc in cfg.iter_keys():
        assert doc, f"{dotted} has no doc"
        assert f"# {doc}" in text


def test_values_from_the_file_are_used(tmp_path: Path) -> None:
    config = cfg.load(
        write(
            tmp_path,
            'cgroup_driver = "systemd"\n[runtime]\ndefault_handler = "kata"\n'
            '[runtime.handlers.kata]\npath = "/opt/kata/bin/kata-runtime"\n'
            '[cni]\nbin_dirs = ["/x"]\n[metrics]\naddress = "127.0.0.1:9090"\n',
        )
    )
    assert config.cgroup_driver == "systemd"
    assert dict(config.runtime.handlers) == {"kata": cfg.HandlerSection("/opt/kata/bin/kata-runtime")}
    assert config.cni.bin_dirs == ("/x",)
    assert config.cni.conf_dir == "/etc/cni/net.d"
    assert config.metrics.address == "127.0.0.1:9090"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rooot = '/x'\n", "rooot: unknown key"),
        ("[cni]\nconfdir = '/x'\n", "cni.confdir: unknown key"),
        ("[nosuch]\n", "nosuch: unknown key"),
        ("root = 5\n", "root: expected a string, got int 5"),
        ("root = 'var/lib'\n", "root: must be an absolute path"),
        ("cgroup_driver = 'cgroupsv3'\n", "cgroup_driver: must be one of cgroupfs, systemd"),
        ("log = 'debug'\n", "log: expected a table"),
        ("[log]\nlevel = 'verbose'\n", "log.level: must be one of debug, info, warning, error"),
        ("[cni]\nbin_dirs = '/opt/cni/bin'\n", "cni.bin_dirs: expected a list of strings"),
        ("[cni]\nbin_dirs = [1, 2]\n", "cni.bin_dirs: expected a list of strings"),
        ("[metrics]\naddress = 'everywhere'\n", "metrics.address: must be host:port"),
        ("[streaming]\naddress = 'example.com:10010'\n", "streaming.address: host must be an IP address"),
        ("[streaming]\naddress = ''\n", "streaming.address: must be host:port"),
        ("[runtime.handlers.Bad_Name]\npath = 'x'\n", "runtime.handlers.Bad_Name: name must be a DNS-1123 label"),
        ("[runtime.handlers.runc]\npath = ''\n", "runtime.handlers.runc.path: must not be empty"),
        ("[runtime.handlers.runc]\nbinary = 'x'\n", "runtime.handlers.runc.binary: unknown key"),
        ("[runtime]\ndefault_handler = 'kata'\n", "runtime.default_handler: 'kata' is not a key of runtime.handlers"),
        ("root = \n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        cfg.load(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        cfg.load(tmp_path / "absent.toml")


def test_overrides_win_over_the_file_and_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "root = '/from/file'\n[log]\nlevel = 'error'\n")
    config = cfg.load(path, {"root": "/from/flag", "log.level": "debug"})
    assert (config.root, config.log.level) == ("/from/flag", "debug")
    with pytest.raises(ConfigError, match=r"^command line: socket: must be an absolute path"):
        cfg.load(path, {"socket": "relative.sock"})


def test_readme_reference_matches_the_declarations() -> None:
    # `make docs` rewrites it; this fails when a key, a default or a doc changed without it.
    assert cfg.render_markdown() in README.read_text()
