"""`make deb` on the host: the package's contents, and its virtualenv running from /usr/lib/moorage, seen through a
read-only overlay in a private mount namespace (nothing is installed on the host). tests/package/test_deb_guest.py
installs it for real under systemd in the guest (`make test-deb`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deb() -> Path:
    out = subprocess.run(
        [str(CHECKOUT / "scripts" / "build-deb")], capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr
    return CHECKOUT / out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tree(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True)
    return root


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def installed(tree: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with the package's /usr/lib laid over the host's, in a mount namespace of its own."""
    script = f'mount -t overlay overlay -o lowerdir={tree}/usr/lib:/usr/lib /usr/lib && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_control_fields(deb: Path) -> None:
    assert field(deb, "Package") == "moorage"
    assert field(deb, "Architecture") == "amd64"
    depends = field(deb, "Depends")
    for wanted in ("python3.11", "runc | crun", "conmon", "containernetworking-plugins"):
        assert wanted in depends


def test_files_and_conffile(tree: Path) -> None:
    assert (tree / "DEBIAN" / "conffiles").read_text().split() == ["/etc/moorage/config.toml"]
    for script in ("postinst", "prerm", "postrm"):
        assert (tree / "DEBIAN" / script).stat().st_mode & 0o111
    assert (tree / "usr/bin/moorage").readlink() == Path("../lib/moorage/bin/moorage")
    unit = (tree / "lib/systemd/system/moorage.service").read_text()
    for setting in (
        "Type=notify",
        "Delegate=yes",
        "KillMode=process",
        "Restart=always",
        "TasksMax=infinity",
        "LimitNOFILE=infinity",
        "OOMScoreAdjust=-999",
        "ExecStart=/usr/bin/moorage serve",
    ):
        assert setting in unit.splitlines()
    for helper in ("pause", "pinns"):
        binary = (tree / "usr/lib/moorage/libexec" / helper).read_bytes()
        assert binary.startswith(b"\x7fELF")
        assert binary[16] == 2  # ET_EXEC: gcc -static (a dynamic build on Debian is a PIE, ET_DYN)
    # The venv is relocated: nothing names where it was built.
    staged = subprocess.run(["grep", "-rlF", "build/deb/stage", str(tree)], capture_output=True, text=True, check=False)
    assert staged.stdout == ""


def test_config_is_the_defaults_commented_but_the_systemd_driver(tree: Path) -> None:
    text = (tree / "etc/moorage/config.toml").read_text()
    live = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert live == ['cgroup_driver = "systemd"']
    default = subprocess.run(
        [str(CHECKOUT / ".venv/bin/moorage"), "config", "default"], capture_output=True, text=True, check=True
    ).stdout
    for line in default.splitlines():
        if line and not line.startswith("#") and not line.startswith("cgroup_driver"):
            assert f"# {line}" in text.splitlines()


def test_the_venv_runs_from_its_installed_path(tree: Path) -> None:
    out = installed(tree, "/usr/lib/moorage/bin/moorage", "config", "check", str(tree / "etc/moorage/config.toml"))
    assert out.returncode == 0, out.stderr
    probe = (
        "import sys, moorage.daemon, moorage.node.pin_helper as n, moorage.runtime.pods.pause_image as p; "
        "print(sys.prefix, n.PINNS, p.DEFAULT_BINARY, n.__file__)"
    )
    out = installed(tree, "/usr/lib/moorage/bin/python3", "-c", probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "/usr/lib/moorage",
        "/usr/lib/moorage/libexec/pinns",
        "/usr/lib/moorage/libexec/pause",
        "/usr/lib/moorage/lib/python3.11/site-packages/moorage/node/pin_helper.py",
    ]
