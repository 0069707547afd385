"""Container Device Interface (CDI) devices: the spec files that describe them, and their edits to the OCI spec.

A container asks for devices by fully qualified name, ``vendor.com/class=name``, in ``ContainerConfig.CDI_devices``
or in annotations whose key starts with ``cdi.k8s.io/`` (the value: names separated by commas), as containerd and
CRI-O read them. The devices are described by CDI spec files (JSON or YAML, ``cdiVersion``, ``kind`` =
``vendor.com/class``, ``devices`` each with ``containerEdits``, plus spec-wide ``containerEdits``) in the
configured directories (``runtime.cdi_spec_dirs``: /etc/cdi, then /var/run/cdi). As the CDI specification
orders it, a later directory wins over an earlier one; two files of one directory that define the same device
make it ambiguous, and a file that cannot be read or does not validate defines nothing (its error is named when
a device it might have held is asked for).

Edits applied, in order (spec-wide edits of each spec once, then each device's): ``env`` (a variable already set
is replaced), ``deviceNodes`` (type, numbers and mode taken from the host node when not given; each gets a cgroup
allow rule with its ``permissions``, "rwm" by default), ``mounts`` (bind by default), ``hooks``,
``additionalGids`` and ``intelRdt``. Network devices (CDI 0.8) are refused: the OCI runtimes here cannot move
them. The files are read at every CreateContainer that asks for a device, so a device plugin's newly written
spec is seen at once; a container that asks for none reads nothing.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.errors import FailedPrecondition, InvalidArgument

ANNOTATION_PREFIX = "cdi.k8s.io/"
HOOK_NAMES = frozenset({"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"})
MAX_SPEC_BYTES = 4 << 20  # a larger spec file is refused, not read

_VENDOR = r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?"  # a letter first, a letter or digit last
_CLASS = _VENDOR
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?"
_KIND_RE = re.compile(rf"({_VENDOR})/({_CLASS})")
_QUALIFIED_RE = re.compile(rf"({_VENDOR})/({_CLASS})=({_NAME})")
_DEVICE_NAME_RE = re.compile(_NAME)


@dataclass(frozen=True)
class Device:
    qualified: str
    edits: Mapping[str, Any]
    spec_file: Path
    spec_edits: Mapping[str, Any]  # the spec-wide containerEdits of its file


def requested(cdi_devices: Iterable[str], annotations: Mapping[str, str]) -> list[str]:
    """The qualified device names a container asks for, in order, each once; a malformed name is refused."""
    names: list[str] = []
    sources = [(f"CDI_devices[{i}].name", name) for i, name in enumerate(cdi_devices)]
    for key in sorted(annotations):
        if key.startswith(ANNOTATION_PREFIX):
            sources += [(f"annotations[{key!r}]", part.strip()) for part in annotations[key].split(",")]
    for field, name in sources:
        if not _QUALIFIED_RE.fullmatch(name):
            raise InvalidArgument(f"{field}: {name!r} is not a fully qualified CDI device name (vendor.com/class=name)")
        if name not in names:
            names.append(name)
    return names


def resolve(names: Sequence[str], spec_dirs: Sequence[Path]) -> list[Device]:
    """The devices of ``names`` from the spec files under ``spec_dirs``; FailedPrecondition names each device no
    spec defines (with the spec files that could not be read) or that two specs of one directory define."""
    found: dict[str, Device] = {}
    broken: list[str] = []
    ambiguous: set[str] = set()
    for directory in spec_dirs:  # later directories override earlier ones
        in_dir: dict[str, Device] = {}
        clashes: set[str] = set()
        for path in _spec_files(directory):
            try:
                devices = _load(path)
            except ValueError as exc:
                broken.append(f"{path}: {exc}")
                continue
            for device in devices:
                if device.qualified in in_dir:
                    clashes.add(device.qualified)
                in_dir[device.qualified] = device
        for qualified, device in in_dir.items():
            found[qualified] = device
            ambiguous.discard(qualified)
        ambiguous |= clashes
    problems = []
    for name in names:
        if name in ambiguous:
            problems.append(f"{name} is defined by more than one spec file in one directory")
        elif name not in found:
            problems.append(f"{name} is defined by no CDI spec in {', '.join(map(str, spec_dirs))}")
    if problems:
        detail = f" (unreadable specs: {'; '.join(broken)})" if broken else ""
        raise FailedPrecondition(f"unresolvable CDI devices: {'; '.join(problems)}{detail}")
    return [found[name] for name in names]


def apply(spec: dict[str, Any], devices: Sequence[Device]) -> None:
    """Apply the devices' container edits (and those of their specs, once per spec file) to ``spec``."""
    seen_specs: set[Path] = set()
    added_mounts = False
    for device in devices:
        edit_sets = [device.edits]
        if device.spec_file not in seen_specs:
            seen_specs.add(device.spec_file)
            edit_sets.insert(0, device.spec_edits)
        for edits in edit_sets:
            where = f"CDI device {device.qualified} ({device.spec_file})"
            _env(spec, edits.get("env") or [])
            _device_nodes(spec, edits.get("deviceNodes") or [], where)
            added_mounts |= _mounts(spec, edits.get("mounts") or [])
            _hooks(spec, edits.get("hooks") or [])
            gids = spec["process"].setdefault("user", {}).setdefault("additionalGids", [])
            gids += [g for g in edits.get("additionalGids") or [] if g and g not in gids]
            if rdt := edits.get("intelRdt"):
                spec["linux"]["intelRdt"] = {k: v for k, v in rdt.items() if k in _RDT_KEYS and v}
            if edits.get("netDevices"):
                raise FailedPrecondition(f"{where}: netDevices are not supported by this node's OCI runtimes")
    if added_mounts:  # parents before children, as the CDI library orders them
        spec["mounts"].sort(key=lambda m: len(Path(m["destination"]).parts))


# --- reading spec files ---------------------------------------------------------------------------------------


def _spec_files(directory: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []  # an absent directory holds no devices
    return [directory / n for n in names if n.endswith((".json", ".yaml", ".yml"))]


def _load(path: Path) -> list[Device]:
    """The devices of one spec file; ValueError says what is wrong with it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from exc
    with open(fd, "rb") as f:  # a FIFO or device named *.json must not block CreateContainer
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        raw = f.read(MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        raise ValueError(f"larger than {MAX_SPEC_BYTES} bytes")
    import yaml  # noqa: PLC0415 - only when a container asks for a device: the daemon does not import it to start

    try:
        doc = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    if not isinstance(doc.get("cdiVersion"), str):
        raise ValueError("cdiVersion is missing")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ValueError(f"kind {kind!r} is not vendor.com/class")
    spec_edits = _edits(doc.get("containerEdits"), "containerEdits")
    devices = doc.get("devices")
    if not isinstance(devices, list) or not devices:
        raise ValueError("devices must be a non-empty list")
    out = []
    for i, entry in enumerate(devices):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _DEVICE_NAME_RE.fullmatch(name):
            raise ValueError(f"devices[{i}].name {name!r} is not a valid device name")
        edits = _edits(entry.get("containerEdits"), f"devices[{i}].containerEdits")
        out.append(Device(f"{kind}={name}", edits, path, spec_edits))
    return out


_LISTS = ("env", "deviceNodes", "mounts", "hooks", "additionalGids", "netDevices")
_RDT_KEYS = frozenset({"closID", "l3CacheSchema", "memBwSchema", "enableCMT", "enableMBM"})


def _edits(value: object, field: str) -> dict[str, Any]:
    """A containerEdits object, checked enough that applying it cannot fail on its shape."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{field} is not an object")
    for key in _LISTS:
        if not isinstance(value.get(key) or [], list):
            raise ValueError(f"{field}.{key} is not a list")
    for i, env in enumerate(value.get("env") or []):
        if not isinstance(env, str) or "=" not in env:
            raise ValueError(f"{field}.env[{i}] is not NAME=VALUE")
    for i, node in enumerate(value.get("deviceNodes") or []):
        if not isinstance(node, dict) or not str(node.get("path", "")).startswith("/"):
            raise ValueError(f"{field}.deviceNodes[{i}].path must be an absolute path")
        if node.get("type", "c") not in ("c", "b", "u", "p"):
            raise ValueError(f"{field}.deviceNodes[{i}].type must be c, b, u or p")
        if any(ch not in "rwm" for ch in str(node.get("permissions") or "")):
            raise ValueError(f"{field}.deviceNodes[{i}].permissions must only contain r, w and m")
    for i, mount in enumerate(value.get("mounts") or []):
        if (
            not isinstance(mount, dict)
            or not mount.get("hostPath")
            or not str(mount.get("containerPath", ""))[:1] == "/"
        ):
            raise ValueError(f"{field}.mounts[{i}] needs a hostPath and an absolute containerPath")
        if not _strings(mount.get("options") or []):
            raise ValueError(f"{field}.mounts[{i}].options must be a list of strings")
    for i, hook in enumerate(value.get("hooks") or []):
        if not isinstance(hook, dict) or hook.get("hookName") not in HOOK_NAMES:
            raise ValueError(f"{field}.hooks[{i}].hookName must be one of {', '.join(sorted(HOOK_NAMES))}")
        if not str(hook.get("path", "")).startswith("/"):
            raise ValueError(f"{field}.hooks[{i}].path must be an absolute path")
        if not (_strings(hook.get("args") or []) and _strings(hook.get("env") or [])):
            raise ValueError(f"{field}.hooks[{i}].args and env must be lists of strings")
        if not isinstance(hook.get("timeout") or 0, int):
            raise ValueError(f"{field}.hooks[{i}].timeout must be a number of seconds")
    for i, gid in enumerate(value.get("additionalGids") or []):
        if not isinstance(gid, int) or gid < 0:
            raise ValueError(f"{field}.additionalGids[{i}] is not a group id")
    if not isinstance(value.get("intelRdt") or {}, dict):
        raise ValueError(f"{field}.intelRdt is not an object")
    return value


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# --- applying edits -------------------------------------------------------------------------------------------


def _env(spec: dict[str, Any], env: list[str]) -> None:
    current: list[str] = spec["process"].setdefault("env", [])
    for entry in env:
        name = entry.split("=", 1)[0]
        current[:] = [e for e in current if e.split("=", 1)[0] != name]
        current.append(entry)


def _device_nodes(spec: dict[str, Any], nodes: list[dict[str, Any]], where: str) -> None:
    linux = spec["linux"]
    user = spec["process"].get("user", {})
    for node in nodes:
        device = _device(node, where)
        for key in ("uid", "gid"):  # as the CDI library: a node the spec gives no owner belongs to the user
            if key not in device and user.get(key, 0) > 0:
                device[key] = user[key]
        linux["devices"] = [d for d in linux.setdefault("devices", []) if d["path"] != device["path"]] + [device]
        if device["type"] != "p":
            rule = {"allow": True, "type": "b" if device["type"] == "b" else "c"}  # an unbuffered "u" is a char device
            rule |= {"major": device["major"], "minor": device["minor"], "access": node.get("permissions") or "rwm"}
            linux.setdefault("resources", {}).setdefault("devices", []).append(rule)


def _device(node: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The OCI device for a CDI device node. A type or numbers it leaves out are read from the host's node
    (``hostPath``, else ``path``), which must then be a device of the type the spec names, if it names one; the
    mode is left to the OCI runtime (0666) unless the spec gives one, as the CDI library does."""
    out = {
        k: node[k]
        for k in ("path", "type", "major", "minor", "fileMode", "uid", "gid")
        if node.get(k) not in (None, "")
    }
    identified = "type" in out and (out["type"] == "p" or ("major" in out and "minor" in out))
    if not identified:
        host_path = node.get("hostPath") or node["path"]
        try:
            st = os.stat(host_path)
        except OSError as exc:
            raise FailedPrecondition(f"{where}: device node {host_path}: {exc.strerror}") from exc
        kind = {stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            raise FailedPrecondition(f"{where}: {host_path} is not a device node")
        named = out.get("type")
        if named is not None and {"u": "c"}.get(named, named) != kind:
            raise FailedPrecondition(f"{where}: {host_path} is of type {kind}, not the {named} the spec names")
        found: dict[str, Any] = {"type": named or kind}
        if kind != "p":
            found |= {"major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev)}
        out = found | out
    if out["type"] == "p":
        out.pop("major", None)
        out.pop("minor", None)
    return out


def _mounts(spec: dict[str, Any], mounts: list[dict[str, Any]]) -> bool:
    for m in mounts:
        spec["mounts"] = [x for x in spec["mounts"] if x["destination"] != m["containerPath"]]
        kind, options = m.get("type") or "bind", list(m.get("options") or [])
        if kind == "bind" and not {"bind", "rbind"} & set(options):
            options.insert(0, "bind")  # runc makes a bind mount of the option, not of the type
        spec["mounts"].append(
            {"destination": m["containerPath"], "type": kind, "source": m["hostPath"], "options": options}
        )
    return bool(mounts)


def _hooks(spec: dict[str, Any], hooks: list[dict[str, Any]]) -> None:
    for h in hooks:
        hook: dict[str, Any] = {"path": h["path"]}
        for key in ("args", "env", "timeout"):
            if h.get(key):
                hook[key] = h[key]
        spec.setdefault("hooks", {}).setdefault(h["hookName"], []).append(hook)
