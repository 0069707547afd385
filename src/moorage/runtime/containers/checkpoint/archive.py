"""The checkpoint archive of one container, in the layout CRI-O writes (and checkpointctl reads).

An uncompressed tar, readable by root only (it holds every memory page of the container's processes)::

    checkpoint/        CRIU's images (runc checkpoint --image-path)
    dump.log           CRIU's log of the dump
    stats-dump         CRIU's statistics of the dump
    config.dump        the container: id, name, image, OCI runtime, when created and checkpointed (JSON)
    spec.dump          the container's OCI spec, its bundle's config.json (JSON)
    bind.mounts        the spec's bind mounts with the type and mode of each source (JSON), when it has any
    rootfs-diff.tar    what the container added or changed in its writable layer (a tar of its own)
    deleted.files      what it deleted from its image's files (JSON list of absolute paths), when anything

The writable layer is an overlayfs upper directory: a deleted file is a whiteout (a character device 0:0)
there. Mount points the runtime made in it (``/dev``, ``/proc``, a bind mount's target) are not the
container's changes and stay out, as CRI-O leaves them out.

The archive is written beside ``location`` under a temporary name and renamed onto it once complete, so a
failed checkpoint leaves nothing at ``location``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moorage.errors import InvalidArgument

CHECKPOINT_DIR = "checkpoint"
CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
BIND_MOUNTS = "bind.mounts"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
DUMP_LOG = "dump.log"
STATS_DUMP = "stats-dump"

MEMBERS = (STATS_DUMP, DUMP_LOG, CHECKPOINT_DIR, CONFIG_DUMP, SPEC_DUMP, BIND_MOUNTS, ROOTFS_DIFF, DELETED_FILES)
"""What goes into the archive, in this order, when present in the work directory."""

RUNTIME_MOUNTS = frozenset({"/dev", "/dev/shm", "/proc", "/run", "/run/.containerenv", "/run/secrets", "/sys"})
"""Mount points every container gets: never part of its file-system changes."""


def rfc3339(ns: int) -> str:
    """A time in nanoseconds since the epoch as RFC 3339 with nanoseconds (Go's time.Time JSON form)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:09d}Z"


def config_dump(
    *, container_id: str, name: str, image: str, image_ref: str, image_name: str, runtime: str, created_at: int,
    checkpointed_at: int,
) -> dict[str, Any]:  # fmt: skip
    """config.dump: the fields CRI-O writes and reads back on restore."""
    return {
        "id": container_id,
        "name": name,
        "rootfsImage": image,
        "rootfsImageRef": image_ref,
        "rootfsImageName": image_name,
        "runtime": runtime,
        "createdTime": rfc3339(created_at),
        "checkpointedTime": rfc3339(checkpointed_at),
        "restored": False,
    }


def bind_mounts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """bind.mounts: each bind mount of the spec with whether its source is a file or a directory and its mode,
    so a restore elsewhere can recreate a missing source of the right type (CRIU mounts only onto the same)."""
    found = []
    for mount in spec.get("mounts", []):
        if mount.get("type") != "bind" or mount.get("destination") in RUNTIME_MOUNTS:
            continue
        source = Path(mount["source"])
        try:
            st = source.stat()
        except OSError as exc:
            raise OSError(exc.errno, f"bind mount source {source} of {mount['destination']}: {exc.strerror}") from exc
        found.append(
            {
                "source": str(source),
                "destination": mount["destination"],
                "file_type": "directory" if stat.S_ISDIR(st.st_mode) else "file",
                "permissions": stat.S_IMODE(st.st_mode),
            }
        )
    return found


def mount_points(spec: dict[str, Any]) -> frozenset[str]:
    """The paths in the container where the runtime mounted something: left out of the file-system changes."""
    return RUNTIME_MOUNTS | {str(m["destination"]).rstrip("/") or "/" for m in spec.get("mounts", [])}


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def rootfs_diff(upper: Path, tar_path: Path, skip: Iterable[str]) -> list[str]:
    """Write what the writable layer ``upper`` adds or changes to ``tar_path`` (paths relative to the root, as
    CRI-O writes them); answer the deleted paths (absolute, sorted)."""
    skipped = frozenset(skip)
    deleted: list[str] = []
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirs, files in os.walk(upper):
            dirs.sort()
            for entry in [*sorted(dirs), *sorted(files)]:
                path = Path(directory) / entry
                inside = "/" + str(path.relative_to(upper))
                if inside in skipped:
                    if entry in dirs:
                        dirs.remove(entry)
                    continue
                st = path.lstat()
                if _is_whiteout(st):
                    deleted.append(inside)
                    continue
                tar.add(path, arcname=inside[1:], recursive=False)
    return sorted(deleted)


def write_json(directory: Path, name: str, value: object) -> None:
    target = directory / name
    target.write_text(json.dumps(value, indent=2))
    target.chmod(0o600)


def write(location: Path, work: Path, members: Sequence[str] = MEMBERS) -> None:
    """The archive of ``work``'s ``members`` (those present) at ``location``, complete or not at all."""
    fd, temp = tempfile.mkstemp(dir=location.parent, prefix=f".{location.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in members:
                    if (work / name).exists():
                        tar.add(work / name, arcname=name)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, location)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def restore_source(image: str, field: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """CRI-O's rule: a CreateContainer whose image names an existing local file restores a checkpoint archive.
    None for an image name; for an archive its config.dump and spec.dump; INVALID_ARGUMENT for any other file."""
    path = Path(image)
    if not path.is_absolute() or not path.is_file():
        return None
    dumps: dict[str, Any] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name in (CONFIG_DUMP, SPEC_DUMP) and member.isfile():
                    data = tar.extractfile(member)
                    dumps[member.name] = json.loads(data.read()) if data is not None else None
    except (OSError, tarfile.TarError, ValueError) as exc:
        message = f"{field} {image!r} is a local file but not a readable checkpoint archive: {exc}"
        raise InvalidArgument(message) from None
    config, spec = dumps.get(CONFIG_DUMP), dumps.get(SPEC_DUMP)
    if not isinstance(config, dict) or not isinstance(spec, dict):
        raise InvalidArgument(
            f"{field} {image!r} is a local file but not a checkpoint archive (a tar with {CONFIG_DUMP} and {SPEC_DUMP})"
        )
    return config, spec


def unpack_for_restore(path: Path, rootfs: Path, restore_dir: Path) -> None:
    """From archive ``path``: CRIU's images into ``restore_dir``/checkpoint, the file-system changes onto the
    container's (mounted) ``rootfs`` and the deleted files deleted from it. Nothing lands outside either: the
    tar filter refuses absolute names, ``..`` and links that lead out, symlinks in the rootfs resolved; such an
    archive is INVALID_ARGUMENT."""
    restore_dir.mkdir(mode=0o700)
    try:
        deleted = _unpack(path, rootfs, restore_dir)
    except tarfile.FilterError as exc:
        raise InvalidArgument(f"checkpoint archive {path}: {exc}") from None
    base = rootfs.resolve()
    for name in deleted:
        relative = os.path.normpath(name.lstrip("/"))
        target = base / relative
        if relative in (".", "..") or relative.startswith("../") or not target.parent.resolve().is_relative_to(base):
            continue  # outside the root filesystem (a symlinked parent included): never touched
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()


def _unpack(path: Path, rootfs: Path, restore_dir: Path) -> list[str]:
    """CRIU's images and the file-system changes out of archive ``path``; the deleted files it lists."""
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        images = [m for m in tar.getmembers() if m.name == CHECKPOINT_DIR or m.name.startswith(f"{CHECKPOINT_DIR}/")]
        tar.extractall(restore_dir, members=images, filter="tar")
        if ROOTFS_DIFF in names and (diff := tar.extractfile(ROOTFS_DIFF)) is not None:
            with tarfile.open(fileobj=diff) as changes:
                changes.extractall(rootfs, filter="tar")
        if DELETED_FILES in names and (listed := tar.extractfile(DELETED_FILES)) is not None:
            deleted = json.loads(listed.read())
            return [str(name) for name in deleted] if isinstance(deleted, list) else []
    return []
