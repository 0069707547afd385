"""``moorage check`` and ``moorage node setup`` run as the real CLI, against temp /etc, /proc, /sys and /run trees.

Nothing here writes the host's /etc or /proc/sys: every root is a temp directory, and modprobe is a script that
records its arguments and does what the kernel would (the module's /sys entry, br_netfilter's sysctls).
The binaries checked are the real runc, crun, conmon and CNI plugins of this host (scripts/debian-packages.txt).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.cli import moorage

SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
CNI_BIN = "/usr/lib/cni"
V2_MOUNTINFO = "26 24 0:24 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
HYBRID_MOUNTINFO = (
    "".join(
        f"{30 + i} 31 0:{30 + i} / /sys/fs/cgroup/{c} rw - cgroup cgroup rw,{c}\n"
        for i, c in enumerate(("cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids"))
    )
    + "41 31 0:41 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)


def roots_args(host: Path) -> list[str]:
    return ["--proc-dir", str(host / "proc"), "--sys-dir", str(host / "sys"), "--run-dir", str(host / "run")]


def set_sysctl(host: Path, name: str, value: str) -> None:
    path = host / "proc" / "sys" / name.replace(".", "/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def sysctl(host: Path, name: str) -> str:
    return (host / "proc" / "sys" / name.replace(".", "/")).read_text().strip()


def fake_host(tmp: Path, mountinfo: str = V2_MOUNTINFO, *, ready: bool = True) -> Path:
    """A host tree: modules and sysctls set (``ready``) or not (no modules, ip_forward 0, no bridge sysctls)."""
    host = tmp / "host"
    (host / "proc" / "self").mkdir(parents=True)
    (host / "proc" / "self" / "mountinfo").write_text(mountinfo)
    (host / "proc" / "modules").write_text("")
    (host / "proc" / "filesystems").write_text("nodev\tsysfs\n\text4\n")
    (host / "sys" / "module").mkdir(parents=True)
    (host / "sys" / "fs" / "cgroup").mkdir(parents=True)
    (host / "sys" / "fs" / "cgroup" / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (host / "run").mkdir()
    if ready:
        for module in ("overlay", "br_netfilter"):
            (host / "sys" / "module" / module).mkdir()
            (host / "sys" / "module" / module / "initstate").write_text("live\n")
        for name in SYSCTLS:
            set_sysctl(host, name, "1")
    else:
        set_sysctl(host, "net.ipv4.ip_forward", "0")
    return host


def moorage_config(tmp: Path) -> Path:
    """A config using this host's runc, crun and conmon, and a bridge network whose plugins are in /usr/lib/cni."""
    conf_dir = tmp / "net.d"
    conf_dir.mkdir()
    network = {
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [{"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}, {"type": "portmap"}],
    }
    (conf_dir / "10-podnet.conflist").write_text(json.dumps(network))
    path = tmp / "config.toml"
    path.write_text(f'[cni]\nconf_dir = "{conf_dir}"\nbin_dirs = ["{CNI_BIN}"]\n')
    return path


def write_modprobe(tmp: Path, host: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """A modprobe that appends its arguments to a log and loads the module into the fake tree."""
    log, script = tmp / "modprobe.log", tmp / "modprobe"
    bridge = host / "proc" / "sys" / "net" / "bridge"
    script.write_text(
        f"""#!/bin/sh
echo "$@" >> {log}
if [ {exit_code} -ne 0 ]; then echo "modprobe: FATAL: Module $1 not found" >&2; exit {exit_code}; fi
mkdir -p {host}/sys/module/$1 && echo live > {host}/sys/module/$1/initstate
if [ "$1" = br_netfilter ]; then
    mkdir -p {bridge} && echo 0 > {bridge}/bridge-nf-call-iptables && echo 0 > {bridge}/bridge-nf-call-ip6tables
fi
"""
    )
    script.chmod(0o755)
    return script, log


def test_check_passes_on_a_ready_node(tmp_path: Path) -> None:
    host, config = fake_host(tmp_path), moorage_config(tmp_path)
    proc = moorage("check", "--config", str(config), *roots_args(host))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith("OK    ") for line in lines[:-1]), proc.stdout
    assert any(line.startswith("OK    runtime runc") and "runc 1." in line for line in lines)
    assert any(line.startswith("OK    cni plugins") and CNI_BIN in line for line in lines)
    assert lines[-1] == f"0 failed, 0 warnings, {len(lines) - 1} ok"


def test_check_fails_naming_the_fix(tmp_path: Path) -> None:
    host, config = fake_host(tmp_path, ready=False), moorage_config(tmp_path)
    proc = moorage("check", "--config", str(config), *roots_args(host))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "sysctl net.ipv4.ip_forward" in line)
    assert line.startswith("FAIL  sysctl net.ipv4.ip_forward")
    assert line.endswith(
        "is 0, must be 1; fix: moorage node setup (or: sysctl -w net.ipv4.ip_forward=1, "
        "and persist it in /etc/sysctl.d/)"
    )
    assert "br_netfilter is not loaded" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("5 failed, ")


def test_check_json_with_a_kubelet_config_on_cgroup_v1(tmp_path: Path) -> None:
    host, config = fake_host(tmp_path, HYBRID_MOUNTINFO), moorage_config(tmp_path)
    kubelet = tmp_path / "kubelet.yaml"
    kubelet.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n")
    proc = moorage("check", "--config", str(config), "--kubelet-config", str(kubelet), "--json", *roots_args(host))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    checks = {c["name"]: c for c in out["checks"]}
    assert out["ok"] is False
    assert checks["cgroup version"]["status"] == "FAIL"  # a 1.35+ kubelet refuses v1 unless failCgroupV1: false
    assert checks["cgroup driver vs kubelet"]["status"] == "FAIL"
    assert "cgroupDriver: systemd" in checks["cgroup driver vs kubelet"]["detail"]
    kubelet.write_text("kind: KubeletConfiguration\ncgroupDriver: cgroupfs\nfailCgroupV1: false\n")
    proc = moorage("check", "--config", str(config), "--kubelet-config", str(kubelet), "--json", *roots_args(host))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {c["name"]: c["status"] for c in json.loads(proc.stdout)["checks"]}["cgroup version"] == "WARN"


def test_check_refuses_a_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('cgroup_driver = "cgroups"\n')
    proc = moorage("check", "--config", str(bad), *roots_args(fake_host(tmp_path)))
    assert proc.returncode == 1
    assert f"{bad}: cgroup_driver: must be one of cgroupfs, systemd" in proc.stderr


def test_setup_applies_and_persists_then_changes_nothing(tmp_path: Path) -> None:
    host, etc = fake_host(tmp_path, ready=False), tmp_path / "etc"
    modprobe, log = write_modprobe(tmp_path, host)
    setup = ["node", "setup", "--etc-dir", str(etc), "--modprobe", str(modprobe), *roots_args(host)]
    first = moorage(*setup)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines() == [
        f"wrote {etc}/modules-load.d/moorage.conf",
        f"wrote {etc}/sysctl.d/99-moorage.conf",
        f"loaded module overlay ({modprobe} overlay)",
        f"loaded module br_netfilter ({modprobe} br_netfilter)",
        "set net.ipv4.ip_forward = 1 (was 0)",
        "set net.bridge.bridge-nf-call-iptables = 1 (was 0)",
        "set net.bridge.bridge-nf-call-ip6tables = 1 (was 0)",
    ]
    modules_conf = (etc / "modules-load.d" / "moorage.conf").read_text()
    assert [line for line in modules_conf.splitlines() if not line.startswith("#")] == ["overlay", "br_netfilter"]
    sysctl_conf = (etc / "sysctl.d" / "99-moorage.conf").read_text()
    assert [line for line in sysctl_conf.splitlines() if not line.startswith("#")] == [f"{n} = 1" for n in SYSCTLS]
    assert [sysctl(host, name) for name in SYSCTLS] == ["1", "1", "1"]
    assert log.read_text() == "overlay\nbr_netfilter\n"

    second = moorage(*setup)
    assert (second.returncode, second.stdout) == (0, "nothing to change\n")
    assert log.read_text() == "overlay\nbr_netfilter\n"

    check = moorage("check", "--config", str(moorage_config(tmp_path)), *roots_args(host))
    assert check.returncode == 0, check.stdout


def test_setup_rewrites_an_edited_file_and_reports_a_failing_modprobe(tmp_path: Path) -> None:
    host, etc = fake_host(tmp_path, ready=False), tmp_path / "etc"
    (etc / "sysctl.d").mkdir(parents=True)
    (etc / "sysctl.d" / "99-moorage.conf").write_text("net.ipv4.ip_forward = 0\n")
    modprobe, log = write_modprobe(tmp_path, host, exit_code=1)
    proc = moorage("node", "setup", "--etc-dir", str(etc), "--modprobe", str(modprobe), *roots_args(host))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [  # what was done before the failure is reported too
        f"wrote {etc}/modules-load.d/moorage.conf",
        f"rewrote {etc}/sysctl.d/99-moorage.conf",
    ]
    assert f"{modprobe} overlay exited 1: modprobe: FATAL: Module overlay not found" in proc.stderr
    assert log.read_text() == "overlay\n"
    assert "net.ipv4.ip_forward = 1" in (etc / "sysctl.d" / "99-moorage.conf").read_text()


@pytest.mark.parametrize("command", [["check"], ["node", "setup"]])
def test_the_commands_are_registered(command: list[str]) -> None:
    proc = moorage(*command, "--help")
    assert proc.returncode == 0
    assert "--proc-dir" not in proc.stdout  # the fake-tree options stay hidden
