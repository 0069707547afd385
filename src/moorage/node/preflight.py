"""Node preflight (``moorage check``): is this host ready to run pods for a kubelet through moorage?

Each check returns a :class:`CheckResult`. Severity:

- **FAIL**: pods or the kubelet will not work as configured (a missing module, sysctl or binary; a broken CNI
  config; the systemd driver without systemd; cgroup v1 under a kubelet configured to refuse it; a kubelet
  ``cgroupDriver`` that differs from moorage's; AppArmor on without apparmor_parser).
- **WARN**: works today but needs attention: cgroup v1/hybrid when the kubelet's ``failCgroupV1`` is unknown or
  false (a Kubernetes >= 1.35 kubelet refuses v1 by default; an older one, or ``failCgroupV1: false``, runs,
  deprecated); no CNI config yet (network add-ons write it after the node joins; the node stays NotReady till then);
  a non-default runtime handler missing; cgroupfs on a systemd host; AppArmor on without securityfs mounted.

Every check takes its roots (:class:`HostRoots`, the config, a PATH) as parameters, so tests run on temp trees.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moorage.config import Config
from moorage.node import apparmor, apparmor_default, cgroupinfo, idmap
from moorage.node.binaries import binary_version, find_binary
from moorage.node.cgroupinfo import CgroupHost, KubeletConfigError, KubeletSettings, NoCgroupsError
from moorage.node.cni.config import CniConfigError, find_plugin, load_network

MODULES = ("overlay", "br_netfilter")
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
REQUIRED_V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids")
REQUIRED_V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids")  # devices and freezer are built into cgroup v2
DEBIAN_PACKAGES = {"runc": "runc", "crun": "crun", "conmon": "conmon"}
SETUP = "moorage node setup"


@dataclass(frozen=True)
class HostRoots:
    """Where the host's /proc, /sys and /run are read; tests point them at temp trees."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    run: Path = Path("/run")

    def sysctl_path(self, name: str) -> Path:
        return self.proc / "sys" / name.replace(".", "/")


HOST = HostRoots()


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome; ``fix`` is the command or config change that fixes a FAIL or WARN."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # ok, but worth acting on

    @property
    def status(self) -> str:
        return "FAIL" if not self.ok else "WARN" if self.warning else "OK"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def _fail(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, False, detail, fix)


def _warn(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, True, detail, fix, warning=True)


# --- kernel modules and sysctls ----------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def module_presence(name: str, roots: HostRoots = HOST) -> str | None:
    """How kernel module ``name`` is present ("loaded as a module", "built into the kernel (...)"), or None."""
    modules = _read(roots.proc / "modules") or ""
    if any(line.split(" ", 1)[0] == name for line in modules.splitlines()):
        return "loaded as a module"
    sys_module = roots.sys / "module" / name
    if sys_module.is_dir():
        return "loaded as a module" if (sys_module / "initstate").exists() else "built into the kernel"
    # A built-in module without parameters has no /sys/module entry; what it provides is the proof.
    if name == "overlay":
        filesystems = _read(roots.proc / "filesystems") or ""
        if "overlay" in (line.split()[-1] for line in filesystems.splitlines() if line.strip()):
            return "built into the kernel (/proc/filesystems lists overlay)"
    if name == "br_netfilter" and roots.sysctl_path("net.bridge.bridge-nf-call-iptables").exists():
        return "built into the kernel (the net.bridge.bridge-nf-call-* sysctls exist)"
    return None


def check_module(name: str, roots: HostRoots = HOST) -> CheckResult:
    presence = module_presence(name, roots)
    if presence:
        return CheckResult(f"module {name}", True, presence)
    return _fail(f"module {name}", "not loaded", f"{SETUP} (or: modprobe {name}, and list it in /etc/modules-load.d/)")


def read_sysctl(name: str, roots: HostRoots = HOST) -> str | None:
    """The value of sysctl ``name``, or None when the kernel has no such sysctl."""
    value = _read(roots.sysctl_path(name))
    return None if value is None else value.strip()


def check_sysctl(name: str, want: str, roots: HostRoots = HOST) -> CheckResult:
    label = f"sysctl {name}"
    value = read_sysctl(name, roots)
    fix = f"{SETUP} (or: sysctl -w {name}={want}, and persist it in /etc/sysctl.d/)"
    if value is None:
        if name.startswith("net.bridge."):
            return _fail(label, f"{roots.sysctl_path(name)} is missing: br_netfilter is not loaded", fix)
        return _fail(label, f"{roots.sysctl_path(name)} is missing", fix)
    if value != want:
        return _fail(label, f"is {value}, must be {want}", fix)
    return CheckResult(label, True, value)


# --- binaries ------------------------------------------------------------------------------------------------------


def check_binary(label: str, path: str, config_key: str, search_path: str | None, required: bool) -> CheckResult:
    """``path`` (a config value) resolves to a binary that answers ``--version``; missing is a WARN unless required."""
    name = Path(path).name
    package = DEBIAN_PACKAGES.get(name)
    install = f"install {name}" + (f" (apt-get install {package})" if package else "")
    fix = f"{install}, or set {config_key} to its absolute path"
    binary = find_binary(path, search_path)
    if binary is None:
        where = path if "/" in path else f"{path} in PATH"
        detail = f"{where}: not found or not executable"
        return _fail(label, detail, fix) if required else _warn(label, f"{detail}; pods asking for it fail", fix)
    try:
        version = binary_version(binary)
    except OSError as exc:
        return _fail(label, str(exc), fix)
    return CheckResult(label, True, f"{name} {version} ({binary})")


def check_runtimes(config: Config, search_path: str | None = None) -> list[CheckResult]:
    """Each handler's OCI runtime (only the default handler's is required) and conmon."""
    results = [
        check_binary(
            f"runtime {name}",
            section.path,
            f"runtime.handlers.{name}.path",
            search_path,
            required=name == config.runtime.default_handler,
        )
        for name, section in sorted(config.runtime.handlers.items())
    ]
    results.append(check_binary("conmon", config.runtime.conmon, "runtime.conmon", search_path, required=True))
    return results


# --- CNI -----------------------------------------------------------------------------------------------------------


def check_cni(conf_dir: Path, bin_dirs: Sequence[Path]) -> list[CheckResult]:
    """A network config in ``conf_dir``, and every plugin it names in ``bin_dirs``."""
    try:
        network = load_network(conf_dir)
    except CniConfigError as exc:
        return [_fail("cni config", str(exc), f"fix or remove that file in {conf_dir}")]
    if network is None:
        return [
            _warn(
                "cni config",
                f"no network config in {conf_dir}: pods get no network and the node stays NotReady until one is there",
                "install the cluster's network add-on (it writes the config), or write a bridge config there",
            )
        ]
    types = network.plugin_types
    results = [CheckResult("cni config", True, f"{network.path}: network {network.name}, plugins {', '.join(types)}")]
    missing = [t for t in types if find_plugin(t, bin_dirs) is None]
    searched = ", ".join(str(d) for d in bin_dirs)
    if missing:
        results.append(
            _fail(
                "cni plugins",
                f"not found in {searched}: {', '.join(missing)}",
                "apt-get install containernetworking-plugins, or add the plugins' directory to cni.bin_dirs",
            )
        )
    else:
        results.append(CheckResult("cni plugins", True, f"all found in {searched}"))
    return results


# --- cgroups -------------------------------------------------------------------------------------------------------


def check_cgroup_version(host: CgroupHost, kubelet: KubeletSettings | None) -> CheckResult:
    """v2 is OK. v1 and hybrid (which the kubelet treats as v1) FAIL when the kubelet config leaves failCgroupV1 on
    (explicitly, or by its default since Kubernetes 1.35), and WARN otherwise: moorage runs on them, and a kubelet
    with ``failCgroupV1: false`` or older than 1.35 does too."""
    name = "cgroup version"
    if host.mode == "v2":
        return CheckResult(name, True, f"v2 ({host.v2_mount})")
    layout = "hybrid: v1 controllers, cgroup2 at " + str(host.v2_mount) if host.mode == "hybrid" else "v1"
    fix = (
        "boot with cgroup v2 only (kernel command line: systemd.unified_cgroup_hierarchy=1, or cgroup_no_v1=all "
        "without systemd); else set failCgroupV1: false in the KubeletConfiguration"
    )
    if kubelet is None:
        return _warn(name, f"{layout}; Kubernetes >= 1.35 refuses cgroup v1 unless failCgroupV1: false", fix)
    if kubelet.fail_cgroup_v1 is False:
        return _warn(name, f"{layout}; the kubelet allows it (failCgroupV1: false), deprecated", fix)
    why = "failCgroupV1: true" if kubelet.fail_cgroup_v1 else "failCgroupV1 unset, true by default since 1.35"
    return _fail(name, f"{layout}; the kubelet will refuse to start ({why})", fix)


def check_cgroup_controllers(host: CgroupHost) -> CheckResult:
    """The controllers the kubelet needs are available (in the v1 hierarchies, or the v2 root)."""
    required: tuple[str, ...]
    if host.mode == "v2":
        available, required = set(host.v2_controllers), REQUIRED_V2_CONTROLLERS
    else:
        available, required = set(host.v1_controllers), REQUIRED_V1_CONTROLLERS
    missing = [c for c in required if c not in available]
    if missing:
        return _fail(
            "cgroup controllers",
            f"missing: {', '.join(missing)}",
            "enable them in the kernel (cgroup_enable=... on the kernel command line) and mount them",
        )
    return CheckResult("cgroup controllers", True, " ".join(sorted(available)))


def check_systemd_driver(driver: str, systemd: bool) -> CheckResult:
    """moorage's cgroup_driver against the init system: the systemd driver needs a running systemd."""
    name = "cgroup driver"
    if driver == "systemd" and not systemd:
        return _fail(
            name,
            "cgroup_driver = systemd, but systemd is not running (/run/systemd/system is missing)",
            'set cgroup_driver = "cgroupfs" in moorage\'s config (and cgroupDriver: cgroupfs for the kubelet)',
        )
    if driver == "cgroupfs" and systemd:
        return _warn(
            name,
            "cgroupfs on a systemd host: two managers write the cgroup tree",
            'set cgroup_driver = "systemd" in moorage\'s config (kubelets >= 1.34 follow it)',
        )
    return CheckResult(name, True, f"{driver} ({'systemd running' if systemd else 'systemd not running'})")


def check_kubelet_driver(driver: str, kubelet: KubeletSettings, kubelet_path: Path) -> CheckResult:
    """moorage's cgroup_driver against the kubelet config's cgroupDriver: a mismatch fails. Kubelets from 1.34 on
    take the driver from RuntimeConfig and ignore their own setting, but older ones put pods where the runtime
    does not look, and a config that says one thing while the node does another misleads whoever reads it."""
    name = "cgroup driver vs kubelet"
    if kubelet.cgroup_driver == driver:
        return CheckResult(name, True, f"both {driver}")
    return CheckResult(
        name,
        False,
        f"moorage uses {driver}, {kubelet_path} says cgroupDriver: {kubelet.cgroup_driver}",
        f"set cgroupDriver: {driver} in {kubelet_path}, "
        f'or cgroup_driver = "{kubelet.cgroup_driver}" in moorage\'s config (both must name the same driver)',
    )


# --- AppArmor ------------------------------------------------------------------------------------------------------


def check_apparmor(roots: HostRoots = HOST, search_path: str | None = None) -> CheckResult:
    """Where the kernel enforces AppArmor, containers get Moorage's default profile unless they ask otherwise:
    apparmor_parser must be there to load it (FAIL without it), and securityfs mounted to see which profiles are
    loaded (WARN without it). Off, containers run unconfined and Localhost profiles are refused (OK)."""
    name = "apparmor"
    if not apparmor.enabled(roots.sys / "module/apparmor/parameters/enabled"):
        return CheckResult(name, True, "off in the kernel: containers run unconfined, Localhost profiles are refused")
    if shutil.which("apparmor_parser", path=search_path) is None:
        return _fail(
            name,
            f"on, but apparmor_parser is missing: {apparmor_default.NAME} cannot be loaded for RuntimeDefault",
            "apt install apparmor",
        )
    profiles = apparmor.loaded_profiles(roots.sys / "kernel/security/apparmor")
    if profiles is None:
        return _warn(
            name,
            "on, but securityfs is not mounted: Localhost profiles cannot be checked before the OCI runtime runs",
            "mount -t securityfs securityfs /sys/kernel/security",
        )
    mode = profiles.get(apparmor_default.NAME)
    loaded = f"{apparmor_default.NAME} loaded ({mode})" if mode else (
        f"{apparmor_default.NAME} not loaded yet (the daemon loads it for the first container that needs it)"
    )  # fmt: skip
    return CheckResult(name, True, f"on, {len(profiles)} profiles loaded; {loaded}")


# --- all of them ---------------------------------------------------------------------------------------------------


def check_user_namespaces(root: Path) -> CheckResult:
    """Pods in user namespaces (``hostUsers: false``): moorage makes their idmapped mounts, where the kernel can
    (:func:`moorage.node.idmap.probe_node`, in the daemon's ``root``). A WARN where it cannot: those pods are
    refused and the kubelet is not offered them; every other pod runs."""
    existing = next(p for p in (root, *root.parents) if p.is_dir())  # the same filesystem, before the daemon made it
    reason = idmap.probe_node(existing / ("idmap-probe" if existing == root else ".moorage-idmap-probe"))
    if reason is None:
        return CheckResult("user namespaces", True, "idmapped tmpfs, image layers and overlays work")
    fix = "Linux 6.3+ (idmapped tmpfs) with moorage's root on ext4, xfs, btrfs or tmpfs"
    return _warn("user namespaces", f"pods cannot have one (hostUsers: false): {reason}", fix)


def run_checks(
    config: Config,
    roots: HostRoots = HOST,
    kubelet_config: Path | None = None,
    search_path: str | None = None,
    user_namespaces: bool = False,
) -> list[CheckResult]:
    """Every check, in the order ``moorage check`` prints them; ``user_namespaces``: probe idmapped mounts too
    (it mounts, so it needs root)."""
    results = [check_module(m, roots) for m in MODULES]
    results += [check_sysctl(name, want, roots) for name, want in SYSCTLS.items()]
    results += check_runtimes(config, search_path)
    results += check_cni(Path(config.cni.conf_dir), [Path(d) for d in config.cni.bin_dirs])
    results.append(check_apparmor(roots, search_path))
    kubelet: KubeletSettings | None = None
    if kubelet_config is not None:
        try:
            kubelet = cgroupinfo.read_kubelet_config(kubelet_config)
        except KubeletConfigError as exc:
            results.append(_fail("kubelet config", str(exc), "pass the kubelet's KubeletConfiguration file"))
    try:
        host = cgroupinfo.detect(roots.proc, roots.sys, roots.run)
    except (OSError, NoCgroupsError) as exc:
        detail = f"cannot read {exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
        results.append(_fail("cgroup version", detail, "mount the cgroup filesystem at /sys/fs/cgroup"))
        systemd = cgroupinfo.systemd_running(roots.run)
    else:
        results += [check_cgroup_version(host, kubelet), check_cgroup_controllers(host)]
        systemd = host.systemd
    results.append(check_systemd_driver(config.cgroup_driver, systemd))
    if kubelet is not None and kubelet_config is not None:
        results.append(check_kubelet_driver(config.cgroup_driver, kubelet, kubelet_config))
    if user_namespaces:
        results.append(check_user_namespaces(Path(config.root)))
    return results
