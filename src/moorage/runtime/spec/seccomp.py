"""linux.seccomp: which profile a container gets, and the profile itself.

=========================================  ==============================================
request                                    linux.seccomp
=========================================  ==============================================
privileged                                 none
``seccomp`` RuntimeDefault                 Moorage's default (:mod:`.seccomp_default`)
``seccomp`` Unconfined                     none
``seccomp`` Localhost ``ref``              the JSON file ``ref`` (relative to seccomp_root)
no ``seccomp``: ``seccomp_profile_path``   "runtime/default" and "docker/default" = default,
                                           "unconfined" or "" = none, "localhost/<path>" = file
=========================================  ==============================================

An unset profile means unconfined, as in containerd: the kubelet's SeccompDefault feature (on by default since
1.27) sends RuntimeDefault explicitly when the pod asks for nothing.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Collection
from pathlib import Path
from typing import Any

from moorage.cri import pb
from moorage.errors import InvalidArgument
from moorage.runtime.spec import seccomp_default

PROFILE_KEYS = ("defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath", "listenerMetadata")
RULE_KEYS = ("names", "action", "errnoRet", "args")


def default_profile(capabilities: Collection[str], machine: str | None = None) -> dict[str, Any]:
    """The RuntimeDefault profile for a process whose bounding set is ``capabilities``."""
    arch = machine or platform.machine()
    syscalls: list[dict[str, Any]] = [{"names": list(seccomp_default.ALLOWED), "action": "SCMP_ACT_ALLOW"}]
    for names, cond in seccomp_default.CONDITIONAL:
        if "arches" in cond and arch not in cond["arches"]:
            continue
        if any(c not in capabilities for c in cond.get("caps", ())):
            continue
        if any(c in capabilities for c in cond.get("not_caps", ())):
            continue
        rule: dict[str, Any] = {"names": list(names), "action": cond.get("action", "SCMP_ACT_ALLOW")}
        for key in ("errnoRet", "args"):
            if key in cond:
                rule[key] = cond[key]
        syscalls.append(rule)
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": seccomp_default.EPERM,
        "architectures": list(seccomp_default.ARCHITECTURES.get(arch, [])),
        "syscalls": syscalls,
    }


def _oci_profile(doc: Any, source: str) -> dict[str, Any]:
    """Keep the OCI fields of a profile file; Docker's ``archMap`` becomes ``architectures`` for this machine."""
    if not isinstance(doc, dict) or not isinstance(doc.get("defaultAction"), str):
        raise InvalidArgument(f"seccomp profile {source}: not a seccomp profile (no defaultAction)")
    out = {k: doc[k] for k in PROFILE_KEYS if k in doc}
    if "archMap" in doc and "architectures" not in doc:
        machine_arch = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}.get(platform.machine())
        for entry in doc["archMap"] or []:
            if entry.get("architecture") == machine_arch:
                out["architectures"] = [machine_arch, *entry.get("subArchitectures", [])]
    rules = doc.get("syscalls") or []
    if not isinstance(rules, list):
        raise InvalidArgument(f"seccomp profile {source}: syscalls must be a list")
    out_rules = []
    for rule in rules:
        if not isinstance(rule, dict):
            raise InvalidArgument(f"seccomp profile {source}: a syscalls entry is not an object")
        names = rule.get("names") or ([rule["name"]] if "name" in rule else [])
        kept = {k: rule[k] for k in RULE_KEYS if k in rule}
        kept["names"] = names
        out_rules.append(kept)
    if out_rules:
        out["syscalls"] = out_rules
    return out


def load_localhost(ref: str, seccomp_root: Path) -> dict[str, Any]:
    if not ref:
        raise InvalidArgument("seccomp: a Localhost profile needs localhost_ref")
    path = Path(ref) if ref.startswith("/") else seccomp_root / ref
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile {path}: invalid JSON: {exc}") from exc
    return _oci_profile(doc, str(path))


def select(
    security: pb.LinuxContainerSecurityContext,
    capabilities: Collection[str],
    seccomp_root: Path,
) -> dict[str, Any] | None:
    """The container's linux.seccomp, or None for unconfined."""
    if security.privileged:
        return None
    if security.HasField("seccomp"):
        profile = security.seccomp
        if profile.profile_type == pb.SecurityProfile.ProfileType.RuntimeDefault:
            return default_profile(capabilities)
        if profile.profile_type == pb.SecurityProfile.ProfileType.Localhost:
            return load_localhost(profile.localhost_ref, seccomp_root)
        return None
    legacy = security.seccomp_profile_path
    if legacy in ("", "unconfined"):
        return None
    if legacy in ("runtime/default", "docker/default"):
        return default_profile(capabilities)
    if legacy.startswith("localhost/"):
        return load_localhost(legacy.removeprefix("localhost/"), seccomp_root)
    raise InvalidArgument(f"seccomp_profile_path: unknown profile {legacy!r}")
