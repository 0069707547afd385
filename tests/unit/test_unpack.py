"""apply_layer against layers built in memory with tarfile: the tree it makes, whiteouts read by a real overlay
mount, and every malicious or broken layer refused without a byte written outside the destination.

Needs root (ownership, device nodes, trusted.* xattrs, mount), like the daemon that runs it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import zstandard

from moorage.errors import InvalidImage, ResourceExhausted
from moorage.images.unpack import LayerStats, apply_layer, detect_compression

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets ownership and makes device nodes: root")

MTIME = 1_600_000_000
CHUNK = 1 << 20


@dataclass
class Layer:
    """A tar layer built member by member, in memory."""

    format: int = tarfile.PAX_FORMAT
    members: list[tuple[tarfile.TarInfo, bytes]] = field(default_factory=list)

    def add(self, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", /, **attrs: object) -> Layer:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mtime = kind, len(data), MTIME
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        for key, value in attrs.items():
            setattr(info, key, value)
        self.members.append((info, data))
        return self

    def file(self, name: str, data: bytes = b"", /, **attrs: object) -> Layer:
        return self.add(name, tarfile.REGTYPE, data, **attrs)

    def dir(self, name: str, /, **attrs: object) -> Layer:
        return self.add(name, tarfile.DIRTYPE, **attrs)

    def symlink(self, name: str, target: str, /, **attrs: object) -> Layer:
        return self.add(name, tarfile.SYMTYPE, linkname=target, **attrs)

    def hardlink(self, name: str, target: str) -> Layer:
        return self.add(name, tarfile.LNKTYPE, linkname=target)

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=self.format) as tar:
            for info, data in self.members:
                tar.addfile(info, io.BytesIO(data) if data else None)
        return out.getvalue()


def compress(data: bytes, kind: Literal["gzip", "zstd", "none"]) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, compresslevel=6)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class Site:
    """A destination for one layer, with a sentinel directory beside it that no layer may touch."""

    tmp: Path

    def __post_init__(self) -> None:
        self.dest = self.tmp / "root" / "layer"
        self.outside = self.tmp / "root" / "outside"
        self.dest.mkdir(parents=True)
        self.outside.mkdir()
        (self.outside / "passwd").write_text("original\n")
        self.before = snapshot(self.outside)

    def apply(self, data: bytes, kind: Literal["gzip", "zstd", "none"] = "none") -> LayerStats:
        blob = self.tmp / f"blob-{kind}"
        blob.write_bytes(compress(data, kind))
        return apply_layer(blob, self.dest)

    def refused(self, data: bytes, message: str, kind: Literal["gzip", "zstd", "none"] = "none") -> None:
        with pytest.raises(InvalidImage) as caught:
            self.apply(data, kind)
        assert str(caught.value) == message
        assert snapshot(self.outside) == self.before
        assert sorted(p.name for p in (self.tmp / "root").iterdir()) == ["layer", "outside"]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def snapshot(root: Path, *, made_now: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Everything apply_layer sets, per path under ``root`` (the root itself as "."); the mtimes of the root and
    of ``made_now`` (directories the layer implies without naming them) are left out."""
    tree: dict[str, tuple[object, ...]] = {}
    for path in [root, *sorted(walk(root))]:
        st = path.lstat()
        kind = stat.S_IFMT(st.st_mode)
        content: object = None
        if stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode):
            content = (os.major(st.st_rdev), os.minor(st.st_rdev))
        xattrs = {}
        if not stat.S_ISLNK(st.st_mode):
            xattrs = {k: os.getxattr(path, k) for k in sorted(os.listxattr(path)) if not k.startswith("security.")}
        name = str(path.relative_to(root))
        mtime = None if path == root or name in made_now else st.st_mtime_ns
        tree[name] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, content, xattrs)
    return tree


def walk(root: Path) -> Iterator[Path]:
    for entry in os.scandir(root):
        yield Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from walk(Path(entry.path))


# --- compression ------------------------------------------------------------------------------------------------


def test_detect_compression_by_magic_bytes() -> None:
    assert detect_compression(gzip.compress(b"x")[:4]) == "gzip"
    assert detect_compression(zstandard.ZstdCompressor().compress(b"x")[:4]) == "zstd"
    assert detect_compression(b"\x50\x2a\x4d\x18") == "zstd"  # a skippable frame
    assert detect_compression(Layer().file("a").tar()[:4]) == "none"
    assert detect_compression(b"") == "none"


def rich_layer() -> Layer:
    big = os.urandom(3 << 20)  # spans several 1 MiB chunks: written by the calling thread
    layer = Layer().dir("./", mode=0o755, mtime=MTIME + 1)
    layer.dir("usr/", uid=0, gid=0, mode=0o755, mtime=MTIME + 2)
    layer.dir("usr/bin", mode=0o755, mtime=MTIME + 3, pax_headers={"SCHILY.xattr.user.dir": "d"})
    layer.file("usr/bin/su", b"#!/bin/true\n", mode=0o4755, uid=0, gid=0, mtime=MTIME + 4)
    layer.file("usr/bin/sgid", b"x", mode=0o2711, uid=7, gid=8, mtime=MTIME + 5)
    layer.file("usr/bin/tool", b"tool", mode=0o700, uid=1000, gid=2000, pax_headers={"SCHILY.xattr.user.foo": "bar"})
    layer.file("usr/big", big, mode=0o600, uid=3, gid=4, mtime=MTIME + 6)
    layer.dir("tmp", mode=0o1777, uid=0, gid=0, mtime=MTIME + 7)
    layer.symlink("usr/bin/sh", "/bin/dash", uid=11, gid=12, mtime=MTIME + 8)
    layer.symlink("usr/rel", "bin/../big", mtime=MTIME + 9)
    layer.hardlink("usr/bin/su-link", "usr/bin/su")
    layer.add("run/fifo", tarfile.FIFOTYPE, mode=0o640, uid=5, gid=6, mtime=MTIME + 10)
    layer.add("already-a-whiteout", tarfile.CHRTYPE, devmajor=0, devminor=0, mode=0o600)
    for i in range(100):  # more than one batch of small files for the writer thread
        layer.file(f"usr/share/doc/f{i}", os.urandom(i * 97), uid=i, gid=i + 1, mode=0o644, mtime=MTIME + i)
    layer.dir("empty/")
    return layer


@root_only
def test_files_dirs_links_and_fifos_keep_owner_mode_mtime_and_xattrs(site: Site) -> None:
    stats = site.apply(rich_layer().tar())
    d = site.dest
    tree = snapshot(d)
    su = (d / "usr/bin/su").lstat()
    assert (stat.S_IMODE(su.st_mode), su.st_uid, su.st_gid, su.st_mtime_ns) == (0o4755, 0, 0, (MTIME + 4) * 10**9)
    assert tree["usr/bin/sgid"][1:4] == (0o2711, 7, 8)
    assert tree["usr/bin/tool"][1:4] == (0o700, 1000, 2000)
    assert os.getxattr(d / "usr/bin/tool", "user.foo") == b"bar"
    assert os.getxattr(d / "usr/bin", "user.dir") == b"d"
    assert (d / "usr/big").stat().st_size == 3 << 20
    assert tree["tmp"][1] == 0o1777
    for name, mtime in [("usr", MTIME + 2), ("usr/bin", MTIME + 3), ("tmp", MTIME + 7)]:
        assert (d / name).lstat().st_mtime_ns == mtime * 10**9, name  # set after their children were made
    assert d.lstat().st_mtime_ns == (MTIME + 1) * 10**9
    sh = (d / "usr/bin/sh").lstat()
    assert stat.S_ISLNK(sh.st_mode)
    assert os.readlink(d / "usr/bin/sh") == "/bin/dash"  # absolute targets are kept as they are
    assert (sh.st_uid, sh.st_gid, sh.st_mtime_ns) == (11, 12, (MTIME + 8) * 10**9)
    assert os.readlink(d / "usr/rel") == "bin/../big"
    link = (d / "usr/bin/su-link").lstat()
    assert link.st_ino == su.st_ino
    assert link.st_nlink == 2
    fifo = (d / "run/fifo").lstat()
    assert stat.S_ISFIFO(fifo.st_mode)
    assert (stat.S_IMODE(fifo.st_mode), fifo.st_uid, fifo.st_gid) == (0o640, 5, 6)
    assert tree["already-a-whiteout"][0] == stat.S_IFCHR
    assert tree["already-a-whiteout"][5] == (0, 0)
    assert (d / "run").lstat().st_mode == stat.S_IFDIR | 0o755  # an implicit parent
    for i in range(100):
        f = (d / f"usr/share/doc/f{i}").lstat()
        assert (f.st_size, f.st_uid, f.st_gid, f.st_mtime_ns) == (i * 97, i, i + 1, (MTIME + i) * 10**9)
    assert stats.size == 12 + 1 + 4 + (3 << 20) + sum(i * 97 for i in range(100))
    # usr, usr/bin, 3 files, big, tmp, 2 symlinks, hardlink, run + fifo, whiteout, share + doc + 100, empty
    assert stats.inodes == 2 + 3 + 1 + 1 + 2 + 1 + 2 + 1 + 102 + 1


@root_only
@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_each_compression_gives_the_same_tree_and_the_diff_id_of_the_tar(
    tmp_path: Path, kind: Literal["gzip", "zstd", "none"]
) -> None:
    data = rich_layer().tar() + bytes(8192)  # padding past the end blocks belongs to the diff id too
    stats = Site(tmp_path / kind).apply(data, kind)
    reference = Site(tmp_path / "reference")
    reference.apply(data)
    assert stats.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    implicit = ("run", "usr/share", "usr/share/doc")
    assert snapshot(tmp_path / kind / "root" / "layer", made_now=implicit) == snapshot(
        reference.dest, made_now=implicit
    )


@root_only
def test_concatenated_gzip_members_and_zstd_frames_are_one_stream(site: Site) -> None:
    data = Layer().file("a", b"a" * 5000).file("b", b"b" * 7000).tar()
    half = len(data) // 2
    blob = site.tmp / "multi.gz"
    blob.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    assert apply_layer(blob, site.dest).diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (site.dest / "b").read_bytes() == b"b" * 7000
    other = Site(site.tmp / "zstd")
    blob = other.tmp / "multi.zst"
    zstd = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"meta"  # as zstd:chunked appends
    blob.write_bytes(zstd.compress(data[:half]) + skippable + zstd.compress(data[half:]))
    assert apply_layer(blob, other.dest).diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (other.dest / "b").read_bytes() == b"b" * 7000


@root_only
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_and_large_ids_in_every_tar_format(site: Site, fmt: int) -> None:
    deep = "/".join(["directory-with-a-long-name"] * 6)  # 161 characters: a ustar prefix, a GNU or PAX long name
    layer = Layer(format=fmt).dir(deep).file(f"{deep}/file", b"x")
    layer.symlink("link", "t" * 90 if fmt == tarfile.USTAR_FORMAT else "t" * 150)
    if fmt != tarfile.USTAR_FORMAT:
        layer.file("big-ids", uid=3_000_000, gid=4_000_000)  # base-256 numbers (GNU) or PAX records
    site.apply(layer.tar())
    assert (site.dest / deep / "file").read_bytes() == b"x"
    assert len(os.readlink(site.dest / "link")) in (90, 150)
    if fmt != tarfile.USTAR_FORMAT:
        st = (site.dest / "big-ids").lstat()
        assert (st.st_uid, st.st_gid) == (3_000_000, 4_000_000)


@root_only
def test_owner_and_mode_are_exact_in_a_setgid_dir_and_under_any_umask(site: Site) -> None:
    layer = Layer().dir("shared", mode=0o2775, gid=50).file("shared/f", b"x", uid=0, gid=0, mode=0o644)
    layer.file("g", b"y", mode=0o666).dir("d", mode=0o777)
    old = os.umask(0o077)
    try:
        site.apply(layer.tar())
    finally:
        os.umask(old)
    f = (site.dest / "shared/f").lstat()
    assert (f.st_gid, stat.S_IMODE(f.st_mode)) == (0, 0o644)  # not the setgid directory's group
    assert stat.S_IMODE((site.dest / "g").lstat().st_mode) == 0o666
    assert stat.S_IMODE((site.dest / "d").lstat().st_mode) == 0o777
    assert stat.S_IMODE((site.dest / "shared").lstat().st_mode) == 0o2775


@root_only
def test_names_are_taken_relative_to_the_layer_root(site: Site) -> None:
    site.apply(Layer().file("/abs/file", b"1").file("./dot/file", b"2").file("a//b/./c", b"3").tar())
    assert (site.dest / "abs/file").read_bytes() == b"1"
    assert (site.dest / "dot/file").read_bytes() == b"2"
    assert (site.dest / "a/b/c").read_bytes() == b"3"


# --- whiteouts ----------------------------------------------------------------------------------------------------


@root_only
def test_whiteouts_become_overlay_whiteouts_and_opaque_dirs(site: Site) -> None:
    layer = Layer().dir("a").file("a/.wh.gone").file(".wh.top").dir("b").file("b/.wh..wh..opq").file("b/new", b"n")
    layer.file("c/.wh..wh..opq")  # the opaque directory itself absent from the layer: made
    stats = site.apply(layer.tar())
    tree = snapshot(site.dest)
    for name in ("a/gone", "top"):
        assert tree[name][0] == stat.S_IFCHR
        assert tree[name][5] == (0, 0)
    assert os.getxattr(site.dest / "b", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(site.dest / "c", "trusted.overlay.opaque") == b"y"
    assert not [n for n in tree if ".wh." in n]
    assert stats.inodes == 6  # a, a/gone, top, b, b/new, c, and no whiteout file


@root_only
def test_overlayfs_own_xattrs_from_pax_headers_are_dropped(site: Site) -> None:
    xattrs = {"SCHILY.xattr.trusted.overlay.redirect": "/elsewhere", "SCHILY.xattr.trusted.other": "kept"}
    site.apply(Layer().dir("d", pax_headers=xattrs).tar())
    assert [x for x in os.listxattr(site.dest / "d") if not x.startswith("security.")] == ["trusted.other"]


@root_only
def test_a_real_overlay_mount_hides_whited_out_files_and_opaque_dirs_children(tmp_path: Path) -> None:
    lower = Site(tmp_path / "lower")
    lower.apply(Layer().file("keep", b"k").file("gone", b"g").dir("dir").file("dir/old", b"o").tar())
    upper = Site(tmp_path / "upper")
    upper.apply(Layer().file(".wh.gone").dir("dir").file("dir/.wh..wh..opq").file("dir/new", b"n").tar(), "gzip")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = f"lowerdir={upper.dest}:{lower.dest}"  # two lower layers, no upperdir: a read-only overlay
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(mnt)], check=True)
    try:
        assert sorted(os.listdir(mnt)) == ["dir", "keep"]
        assert (mnt / "keep").read_bytes() == b"k"
        assert sorted(os.listdir(mnt / "dir")) == ["new"]
        assert not (mnt / "gone").exists()
        assert not (mnt / "dir" / "old").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# --- replacing entries ------------------------------------------------------------------------------------------


@root_only
def test_a_dir_replaces_a_file_of_the_same_name(site: Site) -> None:
    site.apply(Layer().file("x", b"file").dir("x").file("x/y", b"y").tar())
    assert (site.dest / "x").is_dir()
    assert (site.dest / "x/y").read_bytes() == b"y"


@root_only
def test_a_symlink_replaces_a_dir_of_the_same_name(site: Site) -> None:
    site.apply(Layer().dir("d").file("d/f", b"f").dir("d/sub").symlink("d", "elsewhere").tar())
    assert os.readlink(site.dest / "d") == "elsewhere"
    assert sorted(os.listdir(site.dest)) == ["d"]


@root_only
def test_a_file_replaces_a_file_a_symlink_and_a_dir(site: Site) -> None:
    layer = Layer().file("f", b"old").file("f", b"new").symlink("s", "/etc/passwd").file("s", b"not a link")
    layer.dir("d").file("d/child").file("d", b"now a file")
    site.apply(layer.tar())
    assert (site.dest / "f").read_bytes() == b"new"
    assert (site.dest / "s").read_bytes() == b"not a link"
    assert not (site.dest / "s").is_symlink()
    assert (site.dest / "d").read_bytes() == b"now a file"


@root_only
def test_a_hardlink_keeps_its_content_when_the_first_name_is_replaced(site: Site) -> None:
    site.apply(Layer().file("a", b"first").hardlink("b", "a").file("a", b"second").tar())
    assert (site.dest / "a").read_bytes() == b"second"
    assert (site.dest / "b").read_bytes() == b"first"


# --- malicious layers ---------------------------------------------------------------------------------------------


@root_only
@pytest.mark.parametrize("name", ["../x", "/../../x", "a/../../x", "ok/../x"])
def test_names_leaving_the_layer_are_refused(site: Site, name: str) -> None:
    site.refused(Layer().file(name, b"pwned").tar(), f'layer member "{name}": path leaves the layer')


@root_only
def test_a_member_below_an_absolute_symlink_is_refused(site: Site) -> None:
    layer = Layer().symlink("evil", str(site.outside)).file("evil/passwd", b"pwned")
    site.refused(layer.tar(), 'layer member "evil/passwd": parent "evil" is a symlink')


@root_only
def test_a_member_below_a_relative_symlink_is_refused(site: Site) -> None:
    layer = Layer().dir("a").symlink("a/evil", "../../outside").file("a/evil/passwd", b"pwned")
    site.refused(layer.tar(), 'layer member "a/evil/passwd": parent "a/evil" is a symlink')


@root_only
def test_a_dir_replaced_by_a_symlink_is_no_longer_trusted(site: Site) -> None:
    layer = Layer().dir("d").file("d/ok").symlink("d", str(site.outside)).file("d/passwd", b"pwned")
    site.refused(layer.tar(), 'layer member "d/passwd": parent "d" is a symlink')


@root_only
def test_a_whiteout_below_a_symlink_is_refused(site: Site) -> None:
    layer = Layer().symlink("evil", str(site.outside)).file("evil/.wh.passwd")
    site.refused(layer.tar(), 'layer member "evil/.wh.passwd": parent "evil" is a symlink')
    other = Site(site.tmp / "opaque")
    layer = Layer().symlink("evil", str(other.outside)).file("evil/.wh..wh..opq")
    other.refused(layer.tar(), 'layer member "evil/.wh..wh..opq": parent "evil" is a symlink')


@root_only
@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("../outside", "leaves the layer"),
        ("../outside/passwd", "leaves the layer"),
        ("/etc/passwd", "is not a regular file created earlier in this layer"),
        ("missing", "is not a regular file created earlier in this layer"),
        ("dir", "is not a regular file created earlier in this layer"),
        ("link", "is not a regular file created earlier in this layer"),
    ],
)
def test_hardlinks_to_anything_but_an_earlier_file_of_the_layer_are_refused(
    site: Site, target: str, problem: str
) -> None:
    layer = Layer().dir("dir").symlink("link", str(site.outside / "passwd")).hardlink("x", target)
    site.refused(layer.tar(), f'layer member "x": hardlink target "{target}" {problem}')


@root_only
def test_a_hardlink_through_a_symlink_is_refused(site: Site) -> None:
    layer = Layer().symlink("s", str(site.outside)).hardlink("x", "s/passwd")
    site.refused(layer.tar(), 'layer member "x": hardlink target "s/passwd": parent "s" is a symlink')
    assert (site.outside / "passwd").stat().st_nlink == 1


@root_only
def test_device_nodes_are_refused(site: Site) -> None:
    layer = Layer().add("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)
    site.refused(layer.tar(), 'layer member "dev/sda": block device nodes are not allowed in image layers')
    layer = Layer().add("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1)
    message = 'layer member "dev/mem": character device nodes are not allowed in image layers'
    Site(site.tmp / "chr").refused(layer.tar(), message)


@root_only
def test_a_non_directory_layer_root_is_refused(site: Site) -> None:
    site.refused(Layer().file("./", b"x").tar(), 'layer member "./": the layer root must be a directory')
    layer = Layer().symlink(".", "/")
    Site(site.tmp / "symlink").refused(layer.tar(), 'layer member ".": the layer root must be a directory')


# --- broken layers ------------------------------------------------------------------------------------------------


def truncated_layer() -> bytes:
    return Layer().file("small", b"s").file("big", os.urandom(100_000)).tar()


@root_only
def test_a_truncated_tar_is_refused(site: Site) -> None:
    data = truncated_layer()
    site.refused(data[:3000], 'layer is truncated or corrupt: the stream ends inside member "big"')
    other = Site(site.tmp / "in-header")
    other.refused(data[:1200], "layer is truncated or corrupt: the stream ends inside the tar header at offset 1024")


@root_only
def test_a_truncated_gzip_is_refused(site: Site) -> None:
    data = gzip.compress(truncated_layer() + bytes(4096))
    message = "layer is truncated or corrupt: the gzip stream ends early"
    site.refused(data[: len(data) // 2], message)  # written as is: the blob is the cut gzip stream
    # Only the gzip trailer (CRC and length) is missing: every tar byte is there, the stream is still cut.
    Site(site.tmp / "trailer").refused(data[: len(data) - 8], message)


@root_only
def test_a_truncated_or_corrupt_zstd_is_refused(site: Site) -> None:
    data = zstandard.ZstdCompressor().compress(truncated_layer())
    site.refused(data[: len(data) // 2], "layer is truncated or corrupt: the zstd stream ends early")
    message = "layer is truncated or corrupt: zstd: unknown frame magic"
    Site(site.tmp / "garbage").refused(data + b"garbage!", message)


@root_only
def test_a_corrupt_gzip_and_a_bad_header_checksum_are_refused(site: Site) -> None:
    data = bytearray(gzip.compress(truncated_layer()))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(InvalidImage, match=r"^layer is truncated or corrupt: gzip: Error -3 while decompressing"):
        site.apply(bytes(data))
    assert snapshot(site.outside) == site.before
    tar = bytearray(truncated_layer())
    tar[1030] ^= 0x01  # a byte of the second member's name
    message = "layer is truncated or corrupt: bad tar header checksum at offset 1024"
    Site(site.tmp / "checksum").refused(bytes(tar), message)


@root_only
@pytest.mark.parametrize("size", [16 << 10, 2 << 20])  # written by the writer thread, by the calling thread
def test_a_full_filesystem_fails_the_unpack_and_leaks_no_thread_or_descriptor(tmp_path: Path, size: int) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        layer = Layer()
        for i in range(200 if size < CHUNK else 2):
            layer.file(f"f{i}", os.urandom(size))
        blob = tmp_path / "blob"
        blob.write_bytes(layer.tar())
        dest = small / "layer"
        dest.mkdir()
        threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
        with pytest.raises(ResourceExhausted, match=r'^layer member "f\d+": No space left on device'):
            apply_layer(blob, dest)
        assert threading.active_count() == threads
        assert len(os.listdir("/proc/self/fd")) == fds
    finally:
        subprocess.run(["umount", str(small)], check=True)


@root_only
@pytest.mark.parametrize("kind", ["zstd", "gzip", "none"])
def test_a_layer_past_max_size_is_refused_while_it_unpacks(site: Site, kind: Literal["gzip", "zstd", "none"]) -> None:
    """A layer bomb: 8 MiB of zeros compress to a few KiB; with a 1 MiB limit the unpack stops at the limit, not
    at the end of the stream, and says which limit it hit. The same layer under a larger limit unpacks."""
    data = Layer().file("zeros", b"\0" * (8 << 20)).tar()
    blob = site.tmp / f"bomb-{kind}"
    blob.write_bytes(compress(data, kind))
    if kind == "zstd":
        assert blob.stat().st_size < 64 << 10
    with pytest.raises(ResourceExhausted, match=r"unpacks to more than image.max_layer_size \(1048576 bytes\)"):
        apply_layer(blob, site.dest, max_size=1 << 20)
    assert not (site.dest / "zeros").exists() or (site.dest / "zeros").stat().st_size <= 1 << 20
    fresh = Site(site.tmp / "fresh")
    assert apply_layer(blob, fresh.dest, max_size=len(data)).diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
