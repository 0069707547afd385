"""process.user: the uid, gid and supplementary groups of the container's first process.

Precedence, as in containerd's CRI plugin:

* the user part comes from ``run_as_user`` (a uid), else ``run_as_username``, else the image's ``User``
  (``name``, ``uid``, ``name:group`` or ``uid:gid``), else root;
* the group comes from ``run_as_group``, else the group part of the image's ``User`` (when the user part came from
  the image too), else the user's /etc/passwd entry, else 0;
* a user *name* must exist in the image's /etc/passwd (``InvalidArgument`` naming it); a numeric uid need not;
* ``additionalGids`` start with the primary gid (CVE-2023-25173), then, under the ``Merge`` policy, every group of
  the image's /etc/group listing the user as a member, then the requested ``supplemental_groups``. Under ``Strict``
  the image's /etc/group is not consulted.

/etc/passwd and /etc/group are read through :mod:`.rootfs`, so symlinks in the image cannot point them at host files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.cri import pb
from moorage.errors import InvalidArgument
from moorage.runtime.spec import rootfs


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _fields(text: str | None) -> list[list[str]]:
    if text is None:
        return []
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rows.append(line.split(":"))
    return rows


def parse_passwd(text: str | None) -> list[PasswdEntry]:
    out = []
    for f in _fields(text):
        if len(f) >= 4 and f[2].isdigit() and f[3].isdigit():
            out.append(PasswdEntry(f[0], int(f[2]), int(f[3])))
    return out


def parse_group(text: str | None) -> list[GroupEntry]:
    out = []
    for f in _fields(text):
        if len(f) >= 3 and f[2].isdigit():
            members = tuple(m.strip() for m in f[3].split(",") if m.strip()) if len(f) >= 4 else ()
            out.append(GroupEntry(f[0], int(f[2]), members))
    return out


def _read(root: Path, path: str) -> str | None:
    try:
        return rootfs.read_text(root, path)
    except OSError as exc:
        raise InvalidArgument(f"the image's {path} cannot be read: {exc}") from exc


def _read_passwd(root: Path) -> list[PasswdEntry]:
    return parse_passwd(_read(root, "/etc/passwd"))


def _read_group(root: Path) -> list[GroupEntry]:
    return parse_group(_read(root, "/etc/group"))


def _split_image_user(image_user: str) -> tuple[str, str]:
    user, _, group = image_user.partition(":")
    return user, group


def _resolve_group(spec: str, groups: list[GroupEntry], source: str) -> int:
    if spec.isdigit():
        return int(spec)
    for g in groups:
        if g.name == spec:
            return g.gid
    raise InvalidArgument(f"group {spec!r} (from {source}) not found in the image's /etc/group")


def require_user_for_group(
    security: pb.LinuxContainerSecurityContext | pb.LinuxSandboxSecurityContext, where: str
) -> None:
    """``run_as_group`` needs ``run_as_user`` (or a container's ``run_as_username``): api.proto says so for the
    sandbox, and containerd and CRI-O refuse it for both (critest checks the container's)."""
    username = security.run_as_username if isinstance(security, pb.LinuxContainerSecurityContext) else ""
    if security.HasField("run_as_group") and not security.HasField("run_as_user") and not username:
        also = " or run_as_username" if isinstance(security, pb.LinuxContainerSecurityContext) else ""
        raise InvalidArgument(f"{where}.run_as_group is set without run_as_user{also}")


def resolve(
    security: pb.LinuxContainerSecurityContext,
    image_user: str,
    root: Path,
) -> dict[str, Any]:
    """The OCI ``process.user`` object for ``security`` and the image's ``User`` string."""
    require_user_for_group(security, "config.linux.security_context")
    passwd = _read_passwd(root)
    lazy_groups: list[list[GroupEntry]] = []

    def groups() -> list[GroupEntry]:
        if not lazy_groups:
            lazy_groups.append(_read_group(root))
        return lazy_groups[0]

    entry: PasswdEntry | None = None
    group_spec = ""
    group_source = ""
    if security.HasField("run_as_user"):
        uid = security.run_as_user.value
        if uid < 0:
            raise InvalidArgument(f"linux.security_context.run_as_user: negative uid {uid}")
        entry = next((p for p in passwd if p.uid == uid), None)
    elif security.run_as_username:
        entry = next((p for p in passwd if p.name == security.run_as_username), None)
        if entry is None:
            raise InvalidArgument(
                f"linux.security_context.run_as_username: user {security.run_as_username!r} "
                "not found in the image's /etc/passwd"
            )
        uid = entry.uid
    else:
        user_part, group_spec = _split_image_user(image_user)
        group_source = f"the image's User {image_user!r}"
        if not user_part:
            user_part = "0"
        if user_part.isdigit():
            uid = int(user_part)
            entry = next((p for p in passwd if p.uid == uid), None)
        else:
            entry = next((p for p in passwd if p.name == user_part), None)
            if entry is None:
                raise InvalidArgument(f"user {user_part!r} (from {group_source}) not found in the image's /etc/passwd")
            uid = entry.uid

    if security.HasField("run_as_group"):
        gid = security.run_as_group.value
        if gid < 0:
            raise InvalidArgument(f"linux.security_context.run_as_group: negative gid {gid}")
    elif group_spec:
        gid = _resolve_group(group_spec, groups(), group_source)
    elif entry is not None:
        gid = entry.gid
    else:
        gid = 0

    additional = [gid]
    if security.supplemental_groups_policy != pb.SupplementalGroupsPolicy.Strict and entry is not None:
        additional.extend(g.gid for g in groups() if entry.name in g.members)
    additional.extend(int(g) for g in security.supplemental_groups)
    return {"uid": uid, "gid": gid, "additionalGids": list(dict.fromkeys(additional))}
