"""Preflight checks against fake /proc, /sys, /run, config and CNI trees, and the real checks on this host."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from moorage import config as config_mod
from moorage.config import Config
from moorage.node import binaries, preflight
from moorage.node.cgroupinfo import CgroupHost, KubeletSettings
from moorage.node.preflight import CheckResult, HostRoots

GOOD_SYSCTLS = {name: "1" for name in preflight.SYSCTLS}
V2_MOUNTINFO = "26 24 0:24 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def fake_roots(
    tmp: Path,
    *,
    sysctls: dict[str, str] | None = None,
    sys_modules: tuple[str, ...] = ("overlay", "br_netfilter"),
    systemd: bool = False,
) -> HostRoots:
    """A host tree: /proc (sysctls, mountinfo, empty modules list), /sys (modules, cgroup root), /run."""
    roots = HostRoots(proc=tmp / "proc", sys=tmp / "sys", run=tmp / "run")
    (roots.proc / "self").mkdir(parents=True)
    (roots.proc / "self" / "mountinfo").write_text(V2_MOUNTINFO)
    (roots.proc / "modules").write_text("")
    (roots.proc / "filesystems").write_text("nodev\tsysfs\n\text4\n")
    for name, value in (GOOD_SYSCTLS if sysctls is None else sysctls).items():
        roots.sysctl_path(name).parent.mkdir(parents=True, exist_ok=True)
        roots.sysctl_path(name).write_text(f"{value}\n")
    for module in sys_modules:
        (roots.sys / "module" / module).mkdir(parents=True)
        (roots.sys / "module" / module / "initstate").write_text("live\n")
    (roots.sys / "fs" / "cgroup").mkdir(parents=True)
    (roots.sys / "fs" / "cgroup" / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    roots.run.mkdir()
    if systemd:
        (roots.run / "systemd" / "system").mkdir(parents=True)
    return roots


def executable(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def make_config(**values: Any) -> Config:
    return config_mod.with_values(Config(), values, source="test")


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


# --- kernel modules and sysctls ----------------------------------------------------------------------------------


def test_modules_loaded_listed_builtin_or_missing(tmp_path: Path) -> None:
    roots = fake_roots(tmp_path, sys_modules=("overlay",), sysctls={})
    assert preflight.check_module("overlay", roots) == CheckResult("module overlay", True, "loaded as a module")
    missing = preflight.check_module("br_netfilter", roots)
    assert (missing.status, missing.detail) == ("FAIL", "not loaded")
    assert "moorage node setup" in missing.fix
    assert "modprobe br_netfilter" in missing.fix
    (roots.proc / "modules").write_text(
        "br_netfilter 32768 0 - Live 0x0000000000000000\nbridge 311296 1 br_netfilter\n"
    )
    assert preflight.check_module("br_netfilter", roots).detail == "loaded as a module"


def test_builtin_modules_are_found_by_what_they_provide(tmp_path: Path) -> None:
    roots = fake_roots(tmp_path, sys_modules=())
    assert preflight.module_presence("br_netfilter", roots) == (
        "built into the kernel (the net.bridge.bridge-nf-call-* sysctls exist)"
    )
    assert preflight.module_presence("overlay", roots) is None
    (roots.proc / "filesystems").write_text("nodev\tsysfs\nnodev\toverlay\n")
    assert preflight.module_presence("overlay", roots) == "built into the kernel (/proc/filesystems lists overlay)"
    (roots.sys / "module" / "overlay").mkdir(parents=True)  # built in with parameters: no initstate
    assert preflight.module_presence("overlay", roots) == "built into the kernel"


def test_sysctls_must_be_one(tmp_path: Path) -> None:
    roots = fake_roots(tmp_path, sysctls={**GOOD_SYSCTLS, "net.ipv4.ip_forward": "0"})
    bad = preflight.check_sysctl("net.ipv4.ip_forward", "1", roots)
    assert (bad.status, bad.detail) == ("FAIL", "is 0, must be 1")
    assert "sysctl -w net.ipv4.ip_forward=1" in bad.fix
    assert preflight.check_sysctl("net.bridge.bridge-nf-call-iptables", "1", roots).status == "OK"


def test_a_missing_bridge_sysctl_says_br_netfilter_is_not_loaded(tmp_path: Path) -> None:
    roots = fake_roots(tmp_path, sysctls={"net.ipv4.ip_forward": "1"})
    result = preflight.check_sysctl("net.bridge.bridge-nf-call-ip6tables", "1", roots)
    assert result.status == "FAIL"
    assert result.detail.endswith("net/bridge/bridge-nf-call-ip6tables is missing: br_netfilter is not loaded")


# --- binaries ------------------------------------------------------------------------------------------------------


def test_versions_are_parsed_from_the_first_line(tmp_path: Path) -> None:
    runc = executable(tmp_path / "runc", 'echo "runc version 1.2.3"\necho "commit: abc"\n')
    odd = executable(tmp_path / "odd", 'echo\necho "odd 7"\n')
    assert binaries.binary_version(runc) == "1.2.3"
    assert binaries.binary_version(odd) == "odd 7"


def test_runtimes_and_conmon_are_looked_up_in_the_search_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    executable(bin_dir / "runc", 'echo "runc version 1.2.3"\n')
    executable(bin_dir / "conmon", 'echo "conmon version 2.1.12"\n')
    results = by_name(preflight.check_runtimes(make_config(), search_path=str(bin_dir)))
    assert results["runtime runc"] == CheckResult("runtime runc", True, f"runc 1.2.3 ({bin_dir / 'runc'})")
    assert results["conmon"].detail == f"conmon 2.1.12 ({bin_dir / 'conmon'})"
    crun = results["runtime crun"]  # not the default handler: a warning
    assert (crun.status, crun.detail) == ("WARN", "crun in PATH: not found or not executable; pods asking for it fail")
    assert crun.fix == "install crun (apt-get install crun), or set runtime.handlers.crun.path to its absolute path"


def test_a_missing_default_runtime_or_conmon_fails(tmp_path: Path) -> None:
    config = make_config(**{"runtime.conmon": str(tmp_path / "nope" / "conmon")})
    results = by_name(preflight.check_runtimes(config, search_path=str(tmp_path)))
    assert results["runtime runc"].status == "FAIL"
    assert results["conmon"].status == "FAIL"
    assert results["conmon"].detail == f"{tmp_path / 'nope' / 'conmon'}: not found or not executable"
    assert "runtime.conmon" in results["conmon"].fix


def test_a_runtime_that_fails_its_version_call_fails(tmp_path: Path) -> None:
    broken = executable(tmp_path / "myrt", 'echo "libseccomp.so.2: cannot open" >&2\nexit 127\n')
    config = make_config(
        **{"runtime.handlers": {"runc": {"path": str(broken)}}, "runtime.conmon": str(broken)},
    )
    result = by_name(preflight.check_runtimes(config))["runtime runc"]
    assert result.status == "FAIL"
    assert result.detail == f"{broken} --version exited 127: libseccomp.so.2: cannot open"


# --- CNI -----------------------------------------------------------------------------------------------------------


BRIDGE_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [{"type": "bridge", "bridge": "cni0"}, {"type": "portmap", "capabilities": {"portMappings": True}}],
}


def test_no_cni_config_is_a_warning(tmp_path: Path) -> None:
    (result,) = preflight.check_cni(tmp_path / "net.d", [tmp_path / "bin"])
    assert result.status == "WARN"
    assert result.detail.startswith(f"no network config in {tmp_path / 'net.d'}")


def test_a_broken_cni_config_fails_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "10-bad.conflist").write_text("{not json")
    (result,) = preflight.check_cni(tmp_path, [])
    assert result.status == "FAIL"
    assert str(tmp_path / "10-bad.conflist") in result.detail


def test_every_plugin_the_network_names_must_be_installed(tmp_path: Path) -> None:
    conf_dir, bin_dirs = tmp_path / "net.d", [tmp_path / "opt", tmp_path / "lib"]
    conf_dir.mkdir()
    (conf_dir / "10-podnet.conflist").write_text(json.dumps(BRIDGE_CONFLIST))
    executable(bin_dirs[1] / "bridge", "exit 0\n")
    config, plugins = preflight.check_cni(conf_dir, bin_dirs)
    assert config == CheckResult(
        "cni config", True, f"{conf_dir / '10-podnet.conflist'}: network podnet, plugins bridge, portmap"
    )
    assert (plugins.status, plugins.detail) == ("FAIL", f"not found in {bin_dirs[0]}, {bin_dirs[1]}: portmap")
    executable(bin_dirs[0] / "portmap", "exit 0\n")
    assert preflight.check_cni(conf_dir, bin_dirs)[1].status == "OK"


# --- cgroups -------------------------------------------------------------------------------------------------------


def host(mode: str, systemd: bool = False) -> CgroupHost:
    if mode == "v2":
        return CgroupHost("v2", {}, "/sys/fs/cgroup", ("cpu", "cpuset", "memory", "pids"), systemd)
    v1 = {c: f"/sys/fs/cgroup/{c}" for c in preflight.REQUIRED_V1_CONTROLLERS}
    return CgroupHost("hybrid", v1, "/sys/fs/cgroup/unified", (), systemd)


def test_cgroup_v2_is_ok() -> None:
    assert preflight.check_cgroup_version(host("v2"), None) == CheckResult(
        "cgroup version", True, "v2 (/sys/fs/cgroup)"
    )


@pytest.mark.parametrize(
    ("fail_cgroup_v1", "status", "says"),
    [
        (None, "FAIL", "failCgroupV1 unset, true by default since 1.35"),
        (True, "FAIL", "the kubelet will refuse to start (failCgroupV1: true)"),
        (False, "WARN", "the kubelet allows it (failCgroupV1: false), deprecated"),
    ],
)
def test_cgroup_v1_fails_only_when_the_kubelet_would_refuse_it(
    fail_cgroup_v1: bool | None, status: str, says: str
) -> None:
    result = preflight.check_cgroup_version(host("hybrid"), KubeletSettings("cgroupfs", fail_cgroup_v1))
    assert result.status == status
    assert result.detail.startswith("hybrid: v1 controllers, cgroup2 at /sys/fs/cgroup/unified; ")
    assert says in result.detail
    assert "systemd.unified_cgroup_hierarchy=1" in result.fix


def test_cgroup_v1_without_a_kubelet_config_is_a_warning() -> None:
    result = preflight.check_cgroup_version(host("hybrid"), None)
    assert result.status == "WARN"
    assert "Kubernetes >= 1.35 refuses cgroup v1 unless failCgroupV1: false" in result.detail


def test_missing_controllers_fail() -> None:
    v2 = CgroupHost("v2", {}, "/sys/fs/cgroup", ("cpu", "io"), False)
    assert preflight.check_cgroup_controllers(v2).detail == "missing: cpuset, memory, pids"
    assert preflight.check_cgroup_controllers(host("hybrid")).ok


@pytest.mark.parametrize(
    ("driver", "systemd", "status"),
    [("systemd", False, "FAIL"), ("systemd", True, "OK"), ("cgroupfs", True, "WARN"), ("cgroupfs", False, "OK")],
)
def test_the_driver_against_the_init_system(driver: str, systemd: bool, status: str) -> None:
    assert preflight.check_systemd_driver(driver, systemd).status == status


def test_a_kubelet_driver_mismatch_names_both_values_and_the_fix() -> None:
    path = Path("/var/lib/kubelet/config.yaml")
    result = preflight.check_kubelet_driver("cgroupfs", KubeletSettings("systemd", None), path)
    assert result.status == "FAIL"
    assert result.detail.startswith("moorage uses cgroupfs, /var/lib/kubelet/config.yaml says cgroupDriver: systemd")
    assert result.fix == (
        'set cgroupDriver: cgroupfs in /var/lib/kubelet/config.yaml, or cgroup_driver = "systemd" in moorage\'s config '
        "(both must name the same driver)"
    )
    assert preflight.check_kubelet_driver("systemd", KubeletSettings("systemd", None), path).status == "OK"


# --- all of them ---------------------------------------------------------------------------------------------------


def good_node(tmp_path: Path) -> tuple[Config, HostRoots]:
    bin_dir, cni_bin, conf_dir = tmp_path / "bin", tmp_path / "cni-bin", tmp_path / "net.d"
    for name in ("runc", "crun", "conmon"):
        executable(bin_dir / name, f'echo "{name} version 1.0.0"\n')
    for plugin in ("bridge", "portmap"):
        executable(cni_bin / plugin, "exit 0\n")
    conf_dir.mkdir()
    (conf_dir / "10-podnet.conflist").write_text(json.dumps(BRIDGE_CONFLIST))
    config = make_config(
        **{
            "runtime.handlers": {n: {"path": str(bin_dir / n)} for n in ("runc", "crun")},
            "runtime.conmon": str(bin_dir / "conmon"),
            "cni.conf_dir": str(conf_dir),
            "cni.bin_dirs": [str(cni_bin)],
        }
    )
    return config, fake_roots(tmp_path / "host")


def test_a_good_node_passes_everything(tmp_path: Path) -> None:
    config, roots = good_node(tmp_path)
    results = preflight.run_checks(config, roots)
    assert [r.status for r in results] == ["OK"] * len(results)
    assert [r.name for r in results] == [
        "module overlay",
        "module br_netfilter",
        "sysctl net.ipv4.ip_forward",
        "sysctl net.bridge.bridge-nf-call-iptables",
        "sysctl net.bridge.bridge-nf-call-ip6tables",
        "runtime crun",
        "runtime runc",
        "conmon",
        "cni config",
        "cni plugins",
        "apparmor",
        "cgroup version",
        "cgroup controllers",
        "cgroup driver",
    ]


def test_the_kubelet_config_adds_its_checks(tmp_path: Path) -> None:
    config, roots = good_node(tmp_path)
    kubelet = tmp_path / "kubelet.yaml"
    kubelet.write_text("kind: KubeletConfiguration\ncgroupDriver: systemd\n")
    results = by_name(preflight.run_checks(config, roots, kubelet))
    assert results["cgroup driver vs kubelet"].status == "FAIL"
    kubelet.write_text("kind: [")
    results = by_name(preflight.run_checks(config, roots, kubelet))
    assert results["kubelet config"].status == "FAIL"
    assert "cgroup driver vs kubelet" not in results


@pytest.mark.parametrize("systemd", [False, True])
def test_the_systemd_driver_needs_systemd_in_the_run_tree(tmp_path: Path, systemd: bool) -> None:
    config = make_config(cgroup_driver="systemd")
    result = by_name(preflight.run_checks(config, fake_roots(tmp_path, systemd=systemd)))["cgroup driver"]
    assert result.ok is systemd
    if not systemd:
        assert result.fix.startswith('set cgroup_driver = "cgroupfs"')


def test_an_unreadable_mountinfo_fails_the_cgroup_check(tmp_path: Path) -> None:
    config, roots = good_node(tmp_path)
    (roots.proc / "self" / "mountinfo").unlink()
    result = by_name(preflight.run_checks(config, roots))["cgroup version"]
    assert result.status == "FAIL"
    assert result.detail == f"cannot read {roots.proc / 'self' / 'mountinfo'}: No such file or directory"


# --- this host -----------------------------------------------------------------------------------------------------


def _version_line(binary: str) -> str:
    return subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


@pytest.mark.cgroup
def test_the_real_checks_on_this_host() -> None:
    results = by_name(preflight.run_checks(Config()))
    for name, label in (("runc", "runtime runc"), ("conmon", "conmon")):
        result = results[label]
        assert result.status == "OK", result
        match = re.fullmatch(rf"{name} (\d+\.\d+\.\d+\S*) \((/\S+/{name})\)", result.detail)
        assert match, result.detail
        assert match.group(1) in _version_line(match.group(2))
    assert results["module overlay"].ok  # the overlay snapshotter needs it: built in or loaded here
    fs_type = subprocess.run(
        ["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=False
    ).stdout
    version = results["cgroup version"]
    if fs_type.strip() == "cgroup2fs":
        assert version.status == "OK"
    else:  # this machine: hybrid, no kubelet config given, so a warning
        assert version.status == "WARN"
        assert version.detail.startswith("hybrid: v1 controllers, cgroup2 at /sys/fs/cgroup/unified")
    assert results["cgroup controllers"].ok


def test_apparmor_off_is_fine_on_without_its_parser_fails(tmp_path: Path) -> None:
    roots = fake_roots(tmp_path / "host")
    assert preflight.check_apparmor(roots, search_path=str(tmp_path / "bin")).status == "OK"  # off: unconfined
    enabled = roots.sys / "module" / "apparmor" / "parameters" / "enabled"
    enabled.parent.mkdir(parents=True)
    enabled.write_text("Y\n")
    no_parser = preflight.check_apparmor(roots, search_path=str(tmp_path / "bin"))
    assert (no_parser.status, no_parser.fix) == ("FAIL", "apt install apparmor")
    assert "apparmor_parser is missing" in no_parser.detail


def test_apparmor_on_says_whether_the_default_profile_is_loaded(tmp_path: Path) -> None:
    roots = fake_roots(tmp_path / "host")
    enabled = roots.sys / "module" / "apparmor" / "parameters" / "enabled"
    enabled.parent.mkdir(parents=True)
    enabled.write_text("Y\n")
    parser = executable(tmp_path / "bin" / "apparmor_parser", "exit 0\n")
    unmounted = preflight.check_apparmor(roots, search_path=str(parser.parent))
    assert unmounted.status == "WARN"
    assert "securityfs is not mounted" in unmounted.detail
    securityfs = roots.sys / "kernel" / "security" / "apparmor"
    securityfs.mkdir(parents=True)
    (securityfs / "profiles").write_text("/usr/bin/man (enforce)\n")
    waiting = preflight.check_apparmor(roots, search_path=str(parser.parent))
    assert (waiting.status, waiting.detail) == (
        "OK", "on, 1 profiles loaded; moorage-default not loaded yet (the daemon loads it for the first container "
        "that needs it)",
    )  # fmt: skip
    (securityfs / "profiles").write_text("/usr/bin/man (enforce)\nmoorage-default (enforce)\n")
    loaded = preflight.check_apparmor(roots, search_path=str(parser.parent))
    assert loaded.detail == "on, 2 profiles loaded; moorage-default loaded (enforce)"
