"""Apply one image layer blob (a tar stream, plain, gzip or zstd) into an empty directory, as an overlayfs lower layer.

This is the applier of containerd's overlay snapshotter. The layer is read once, as a stream, by three threads:
one reads the blob, decompresses it and hashes the tar bytes (the diff id: ``decompress``) and the calling thread
parses tar headers (``tarstream``); the calling thread also makes every path operation (create, link, remove,
check), and a third writes the content and metadata of small files through the descriptors it opened. zlib,
zstd, sha256 and file I/O release the GIL, so the three overlap as ``tar -xz`` overlaps gzip and tar. OCI whiteouts
become what overlayfs reads in a lower layer::

    dir/.wh.name        ->  dir/name: a character device 0:0 (an overlay whiteout)
    dir/.wh..wh..opq    ->  xattr trusted.overlay.opaque=y on dir (hides the children lower layers give dir)

The layer is untrusted, and nothing is ever written outside ``dest``:

- member names lose a leading ``/`` and ``./``; a name with a ``..`` component is refused;
- no symlink is ever followed: each parent directory is checked with ``lstat`` the first time it is used (then
  remembered until something replaces it), files are created with ``O_EXCL | O_NOFOLLOW``, and a metadata
  call that takes a path either does not follow symlinks or names an entry just checked or made, not a symlink;
- a hard link must name a regular file this layer already created, reached through real directories only;
- block devices and character devices other than 0:0 (a whiteout) are refused;
- ``trusted.overlay.*`` xattrs in PAX headers are dropped: they steer overlayfs (redirects, metacopy), and a
  layer says what overlayfs needs with whiteout files only.

Owners, modes (setuid, setgid, sticky included), mtimes and ``SCHILY.xattr.*`` xattrs are kept; a failing
``security.selinux`` is skipped (labels are the runtime's business).

A member that lands on an existing entry replaces it, as tar does (a directory stays a directory when the new
member is a directory too). On error, ``dest`` is left as it is: the caller removes the whole directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moorage.errors import InvalidImage, MoorageError
from moorage.images.bodywriter import BodyWriter, os_failure
from moorage.images.tarstream import (
    BLK,
    CHR,
    DATA_TYPES,
    DIR,
    FIFO,
    LNK,
    SYM,
    Compression,
    Member,
    TarReader,
    detect_compression,
    open_layer,
    show_name,
)

__all__ = ["Compression", "LayerStats", "apply_layer", "detect_compression"]

BODY_MAX = 64 << 10  # files up to this size are written by the worker thread (larger ones: no gain)

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPAQUE = b".wh..wh..opq"
_WHITEOUT = b".wh."
_OPAQUE_XATTR = b"trusted.overlay.opaque"


@dataclass(frozen=True)
class LayerStats:
    diff_id: str  # "sha256:<hex>" of the whole uncompressed tar stream, read to its end
    size: int  # bytes of regular-file content written
    inodes: int  # entries created: files, directories, links, whiteouts, ...


def apply_layer(blob: Path, dest: Path, max_size: int | None = None) -> LayerStats:
    """Unpack ``blob`` into the empty directory ``dest``; synchronous (run it in a thread).

    Raises InvalidImage for a malformed or unsafe layer, naming the member and the problem; ResourceExhausted
    when the disk is full or the layer unpacks to more than ``max_size`` bytes; MoorageError for other I/O failures.
    """
    digest = hashlib.sha256()
    with open_layer(blob, digest.update, max_size) as reader:
        writer = _Writer(dest)
        try:
            while (member := reader.next()) is not None:
                writer.apply(member, reader)
            writer.finish()
        finally:
            writer.close()
    return LayerStats(f"sha256:{digest.hexdigest()}", writer.size, writer.inodes)


# --- the writer -----------------------------------------------------------------------------------------------


def _normalize(name: bytes) -> bytes | None:
    """``name`` relative to the layer root without empty or ``.`` components; None if it has a ``..`` one."""
    if not name.startswith((b"/", b".")) and b"/." not in name and b"//" not in name and b"\0" not in name:
        return name[:-1] if name.endswith(b"/") else name  # already clean: the usual case
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts or b"\0" in name:
        return None
    return b"/".join(parts)


class _Writer:
    """Creates members under ``dest``. ``_dirs`` holds the paths (relative, normalized) known to be real
    directories, each ancestor included; whatever removes a directory forgets it and everything under it."""

    def __init__(self, dest: Path) -> None:
        self._root = os.fsencode(os.path.abspath(dest))
        self._dirs: set[bytes] = {b""}
        self._setgid_dirs: set[bytes] = {b""} if os.lstat(self._root).st_mode & stat.S_ISGID else set()
        self._dir_times: dict[bytes, int] = {}  # set last: creating children changes a directory's mtime
        # What a new file gets without asking, to skip fchown and fchmod when that is already right. A default
        # ACL replaces the umask: then every mode is set explicitly.
        self._owner = (os.geteuid(), os.getegid())
        self._umask = 0o777 if _has_default_acl(self._root) else _umask()
        self._bodies = BodyWriter()
        self.size = 0
        self.inodes = 0

    def _path(self, rel: bytes) -> bytes:
        return self._root + b"/" + rel if rel else self._root

    def apply(self, m: Member, reader: TarReader) -> None:
        rel = _normalize(m.name)
        if rel is None:
            raise InvalidImage(f'layer member "{m.shown}": path leaves the layer')
        try:
            self._apply(m, rel, reader)
        except OSError as exc:
            raise os_failure(m.shown, exc) from exc
        except (OverflowError, ValueError) as exc:
            raise InvalidImage(f'layer member "{m.shown}": {exc}') from exc

    def _apply(self, m: Member, rel: bytes, reader: TarReader) -> None:
        parent, _, base = rel.rpartition(b"/")
        if parent not in self._dirs:
            self._walk(parent, m, create=True)
        if base.startswith(_WHITEOUT):
            self._whiteout(m, parent, base)
            return
        t = m.typeflag
        if not rel and t != DIR:
            raise InvalidImage(f'layer member "{m.shown}": the layer root must be a directory')
        path = self._path(rel)
        if t in DATA_TYPES:
            self._regular(m, rel, parent, path, reader)
        elif t == DIR:
            self._directory(m, rel, path)
        elif t == SYM:
            self._symlink(m, rel, path)
        elif t == LNK:
            self._hardlink(m, rel, path)
        elif t == FIFO or (t == CHR and m.devmajor == m.devminor == 0):
            kind = stat.S_IFIFO if t == FIFO else stat.S_IFCHR  # char 0:0 is an overlay whiteout already
            self._create(rel, path, lambda: os.mknod(path, kind | 0o600))
            self._set_metadata(m, path)
        elif t == CHR:
            raise InvalidImage(f'layer member "{m.shown}": character device nodes are not allowed in image layers')
        elif t == BLK:
            raise InvalidImage(f'layer member "{m.shown}": block device nodes are not allowed in image layers')
        else:
            raise InvalidImage(f'layer member "{m.shown}": unsupported tar entry type {chr(t)!r}')

    def close(self) -> None:
        """Wait for the file bodies under way, closing their descriptors (also after an error)."""
        self._bodies.close()

    def finish(self) -> None:
        """After the last member: wait for the file bodies, then set directory mtimes."""
        if (error := self._bodies.close()) is not None:
            raise error
        for rel, mtime_ns in self._dir_times.items():
            try:
                os.utime(self._path(rel), ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            except OSError as exc:
                raise MoorageError(f'layer directory "{show_name(rel)}": setting its mtime: {exc}') from exc

    # --- member kinds ---

    def _regular(self, m: Member, rel: bytes, parent: bytes, path: bytes, reader: TarReader) -> None:
        mode = m.mode
        chmod = mode & 0o7000 or mode & self._umask  # else creating the file with ``mode`` gives ``mode``
        try:
            fd = os.open(path, _CREATE, 0o600 if chmod else mode)
        except FileExistsError:
            self._remove(rel, path)
            fd = os.open(path, _CREATE, 0o600 if chmod else mode)
        self.inodes += 1
        chown = (m.uid, m.gid) != self._owner or parent in self._setgid_dirs
        if not m.xattrs and m.size <= BODY_MAX and (content := reader.take(m.size)) is not None:
            self.size += m.size
            self._bodies.add((fd, content, m.uid if chown else -1, m.gid, mode if chmod else -1, m.mtime_ns, m.name))
            return
        try:
            if m.size:
                reader.copy_to(fd, m.size)
                self.size += m.size
            if chown:
                os.fchown(fd, m.uid, m.gid)
            if m.xattrs:
                self._set_xattrs(m, fd)
            if chmod:
                os.fchmod(fd, mode)  # after fchown, which clears setuid and setgid
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)

    def _directory(self, m: Member, rel: bytes, path: bytes) -> None:
        if rel not in self._dirs:
            try:
                os.mkdir(path, 0o700)
                self.inodes += 1
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    os.unlink(path)
                    os.mkdir(path, 0o700)
                    self.inodes += 1
            self._dirs.add(rel)
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if m.xattrs:
            self._set_xattrs(m, path)
        os.chmod(path, m.mode)  # a real directory: checked or created just above
        if m.mode & stat.S_ISGID:
            self._setgid_dirs.add(rel)
        else:
            self._setgid_dirs.discard(rel)
        self._dir_times[rel] = m.mtime_ns

    def _symlink(self, m: Member, rel: bytes, path: bytes) -> None:
        if not m.linkname or b"\0" in m.linkname:
            raise InvalidImage(f'layer member "{m.shown}": symlink with an empty or malformed target')
        self._create(rel, path, lambda: os.symlink(m.linkname, path))
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if m.xattrs:
            self._set_xattrs(m, path)
        os.utime(path, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)

    def _hardlink(self, m: Member, rel: bytes, path: bytes) -> None:
        target = _normalize(m.linkname)
        shown = f'layer member "{m.shown}": hardlink target "{show_name(m.linkname)}"'
        if target is None:
            raise InvalidImage(f"{shown} leaves the layer")
        if rel.startswith(target + b"/") or target.startswith(rel + b"/"):
            raise InvalidImage(f"{shown} cannot be linked at this path")
        if target == rel:
            return  # a link to itself: nothing to do
        target_parent = target.rpartition(b"/")[0]
        if target_parent not in self._dirs:
            self._walk(target_parent, m, create=False, what=shown)
        target_path = self._path(target)
        try:
            st = os.lstat(target_path) if target else None
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise InvalidImage(f"{shown} is not a regular file created earlier in this layer")
        self._create(rel, path, lambda: os.link(target_path, path, follow_symlinks=False))

    def _whiteout(self, m: Member, parent: bytes, base: bytes) -> None:
        if base == _OPAQUE:
            os.setxattr(self._path(parent), _OPAQUE_XATTR, b"y", follow_symlinks=False)  # a checked real dir
            return
        if base.startswith(_WHITEOUT + _WHITEOUT):
            return  # other .wh..wh. names are aufs bookkeeping, meaningless to overlayfs
        hidden = base[len(_WHITEOUT) :]
        if hidden in (b"", b".", b".."):
            raise InvalidImage(f'layer member "{m.shown}": whiteout of an invalid name')
        rel = parent + b"/" + hidden if parent else hidden
        path = self._path(rel)
        self._create(rel, path, lambda: os.mknod(path, stat.S_IFCHR, os.makedev(0, 0)))
        os.chown(path, m.uid, m.gid, follow_symlinks=False)

    # --- helpers ---

    def _walk(self, rel: bytes, m: Member, *, create: bool, what: str = "") -> None:
        """Check that ``rel`` and its ancestors are real directories (creating missing ones when ``create``)."""
        what = what or f'layer member "{m.shown}"'
        prefix = b""
        for part in rel.split(b"/"):
            prefix = prefix + b"/" + part if prefix else part
            if prefix in self._dirs:
                continue
            path = self._path(prefix)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not create:
                    raise InvalidImage(f"{what} is not a regular file created earlier in this layer") from None
                os.mkdir(path, 0o755)  # an implicit parent, as tar and containerd make them
                os.chmod(path, 0o755)
                self.inodes += 1
                self._dirs.add(prefix)
                continue
            if stat.S_ISLNK(mode):
                raise InvalidImage(f'{what}: parent "{show_name(prefix)}" is a symlink')
            if not stat.S_ISDIR(mode):
                raise InvalidImage(f'{what}: parent "{show_name(prefix)}" is not a directory')
            self._dirs.add(prefix)
            if mode & stat.S_ISGID:
                self._setgid_dirs.add(prefix)

    def _create(self, rel: bytes, path: bytes, make: Callable[[], None]) -> None:
        try:
            make()
        except FileExistsError:
            self._remove(rel, path)
            make()
        self.inodes += 1

    def _remove(self, rel: bytes, path: bytes) -> None:
        """Remove the entry at ``rel`` that a new member replaces (never the layer root)."""
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)  # fd-based: follows no symlink inside
            below = rel + b"/"
            self._dirs = {d for d in self._dirs if d != rel and not d.startswith(below)}
            self._setgid_dirs = {d for d in self._setgid_dirs if d != rel and not d.startswith(below)}
            self._dir_times = {d: t for d, t in self._dir_times.items() if d != rel and not d.startswith(below)}
        else:
            os.unlink(path)

    def _set_metadata(self, m: Member, path: bytes) -> None:
        """Owner, xattrs, mode and mtime of a node just created at ``path`` (not a symlink, not a directory)."""
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if m.xattrs:
            self._set_xattrs(m, path)
        os.chmod(path, m.mode)
        os.utime(path, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)

    def _set_xattrs(self, m: Member, target: int | bytes) -> None:
        assert m.xattrs is not None
        for key, value in m.xattrs.items():
            if key.startswith(b"trusted.overlay."):
                continue  # overlayfs's own (opaque, redirect, metacopy): a layer says those with whiteouts only
            if key == b"system.posix_acl_default":
                self._umask = 0o777
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as exc:
                if key == b"security.selinux":
                    continue  # labels are the runtime's to set; a host without SELinux refuses them
                raise MoorageError(
                    f'layer member "{m.shown}": setting xattr "{show_name(key)}": {exc.strerror}'
                ) from exc


def _has_default_acl(path: bytes) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_default")
    except OSError:
        return False
    return True


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread); 0o777 if unknown, so
    that every mode is then set explicitly."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777
