"""The pieces the critest images are made of: layer trees, busybox with every applet, static helpers compiled
from C, and Debian programs with the shared libraries they load.

``Tree`` collects the tar entries of one layer, adding missing parent directories first; ``Tree.layer()``
hands them to :func:`tests.fixtures.images.layer`, which makes the deterministic blob (fixed mtimes, gzip
header mtime 0). Everything here reads the host's Debian 12 files, so the bytes, and with them the image ids,
are the same on every run of the same machine.

Busybox is laid out as upstream's image does it: ``/bin/busybox`` and a *hard* link per applet, and its sh
looks commands up in PATH. Both matter to critest's MaskedPaths spec, which bind-mounts /dev/null over
``/bin/ls`` and wants ``/bin/sh -c ls`` to answer ``/bin/sh: ls: Permission denied``: a symlink would mask
busybox itself, and the sh of Debian's busybox-static (the host's /bin/busybox) runs its applets without
looking at /bin at all. So the images carry the busybox of Debian's ``busybox`` package (its dynamic build,
whose sh searches PATH, like upstream's) with the C library it links, fetched with ``apt-get download`` into
build/critest-images once (that package conflicts with busybox-static, which the test fixtures use, so it is
not installed). The fixture's ``busybox_layer()`` (static busybox, a few symlinked applets) is not used here.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

from tests.fixtures.images import Entry, Layer, layer

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]
CACHE = CHECKOUT / "build" / "critest-images"
BUILD_STATIC = CHECKOUT / "scripts" / "build-static"
PAUSE_SOURCE = CHECKOUT / "src" / "moorage" / "runtime" / "pause" / "pause.c"

TOOLBOX_APPLETS = ("pgrep", "ipcs")  # toolbox.c: in upstream busybox, missing from Debian's busybox-static

# Upstream busybox's /etc files, which the images built on it extend.
BUSYBOX_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "bin:x:2:2:bin:/bin:/bin/false\n"
    "sys:x:3:3:sys:/dev:/bin/false\n"
    "sync:x:4:100:sync:/bin:/bin/sync\n"
    "mail:x:8:8:mail:/var/spool/mail:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "operator:x:37:37:Operator:/var:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
BUSYBOX_GROUP = "".join(
    f"{name}:x:{gid}:{members}\n"
    for name, gid, members in (
        ("root", 0, ""), ("daemon", 1, ""), ("bin", 2, ""), ("sys", 3, ""), ("adm", 4, ""), ("tty", 5, ""),
        ("disk", 6, ""), ("lp", 7, ""), ("mail", 8, ""), ("kmem", 9, ""), ("wheel", 10, "root"),
        ("cdrom", 11, ""), ("dialout", 18, ""), ("floppy", 19, ""), ("video", 28, ""), ("audio", 29, ""),
        ("tape", 32, ""), ("www-data", 33, ""), ("operator", 37, ""), ("utmp", 43, ""), ("plugdev", 46, ""),
        ("staff", 50, ""), ("lock", 54, ""), ("netdev", 82, ""), ("users", 100, ""), ("nogroup", 65534, ""),
    )
)  # fmt: skip
BUSYBOX_SHADOW = "".join(
    f"{line.split(':')[0]}:{'*' if line.startswith('root:') else '!'}:19675:0:99999:7:::\n"
    for line in BUSYBOX_PASSWD.splitlines()
)


class Tree:
    """The tar entries of one layer in order, each path's missing parent directories (0755 root) first."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._dirs: set[str] = set()
        self._modes: dict[str, int] = {}  # each regular file's mode, which its hard links repeat

    def _parents(self, path: str) -> str:
        path = path.strip("/")
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent not in self._dirs:
                self.dir(parent)
        return path

    def dir(self, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Tree:
        path = self._parents(path)
        self._dirs.add(path)
        self.entries.append(Entry.directory(path, mode=mode, uid=uid, gid=gid))
        return self

    def file(self, path: str, data: bytes | str, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Tree:
        data = data.encode() if isinstance(data, str) else data
        path = self._parents(path)
        self._modes[path] = mode
        self.entries.append(Entry.file(path, data, mode=mode, uid=uid, gid=gid))
        return self

    def symlink(self, path: str, target: str) -> Tree:
        self.entries.append(Entry.symlink(self._parents(path), target))
        return self

    def hardlink(self, path: str, target: str) -> Tree:
        """A hard link to the regular file ``target`` added before, with its mode in the header as tar writes
        it: extractors such as containerd's and Python's chmod the link by that mode."""
        entry = Entry.hardlink(self._parents(path), target)
        entry.info.mode = self._modes[target.strip("/")]
        self.entries.append(entry)
        return self

    def host_files(self, paths: list[str]) -> Tree:
        """Copies of host files at the same paths, with their modes (symlinks followed)."""
        for path in paths:
            self.file(path, Path(path).read_bytes(), mode=os.stat(path).st_mode & 0o7777)
        return self

    def layer(self) -> Layer:
        return layer(self.entries)


def static_binary(source: Path) -> bytes:
    """``source`` compiled by scripts/build-static (gcc -static -Os -s), cached in build/critest-images under
    the hash of the source and the build script, so a build costs one compile per change (~0.1 s each)."""
    key = hashlib.sha256(source.read_bytes() + BUILD_STATIC.read_bytes()).hexdigest()[:16]
    out = CACHE / f"{source.stem}-{key}"
    if not out.is_file():
        proc = subprocess.run([str(BUILD_STATIC), str(source), str(out)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{BUILD_STATIC} {source} failed ({proc.returncode}):\n{proc.stderr}")
    return out.read_bytes()


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", *args],
                          cwd=CACHE, capture_output=True, text=True, check=False)  # fmt: skip


@functools.cache
def debian_busybox() -> Path:
    """/bin/busybox of Debian's ``busybox`` package, extracted into build/critest-images (downloaded there the
    first time, with ``apt-get update`` first if apt's lists lack it); the newest one there is used."""
    CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(CACHE.glob("busybox_*.deb"))
    if not debs:
        fetched = _apt("download", "busybox")
        if fetched.returncode != 0:
            _apt("update")
            fetched = _apt("download", "busybox")
        debs = sorted(CACHE.glob("busybox_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download busybox failed in {CACHE}:\n{fetched.stderr}")
    binary = CACHE / debs[-1].name.removesuffix(".deb")
    if not binary.is_file():
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            member = archive.extractfile("./bin/busybox")
            assert member is not None, f"{debs[-1]} has no /bin/busybox"
            tmp = binary.with_name(f"{binary.name}.tmp{os.getpid()}")
            tmp.write_bytes(member.read())
        tmp.chmod(0o755)
        tmp.rename(binary)
    return binary


def busybox_applets(busybox: Path) -> list[str]:
    """The applets of ``busybox`` (``busybox --list``), sorted, without "busybox" itself."""
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    return sorted(set(listed) - {"busybox"})


@functools.cache
def busybox_base() -> Layer:
    """Upstream busybox's root: /bin/busybox hard-linked as every applet (plus pgrep and ipcs from toolbox.c,
    which Debian's build lacks) and the C library it loads, /etc/passwd, group, shadow and nsswitch.conf,
    /etc/mtab, /root, /tmp (1777), /home, /var."""
    busybox = debian_busybox()
    tree = Tree().dir("bin").file("bin/busybox", busybox.read_bytes(), mode=0o755)
    tree.host_files(busybox_libraries())
    applets = busybox_applets(busybox)
    for name in applets:
        tree.hardlink(f"bin/{name}", "bin/busybox")
    missing = [name for name in TOOLBOX_APPLETS if name not in applets]
    if missing:
        tree.file(f"bin/{missing[0]}", static_binary(HERE / "toolbox.c"), mode=0o755)
        for name in missing[1:]:
            tree.hardlink(f"bin/{name}", f"bin/{missing[0]}")
    tree.dir("dev").dir("etc").file("etc/passwd", BUSYBOX_PASSWD).file("etc/group", BUSYBOX_GROUP)
    tree.file("etc/shadow", BUSYBOX_SHADOW, mode=0o600).symlink("etc/mtab", "/proc/mounts")
    tree.file("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")
    tree.dir("home").dir("root", mode=0o700).dir("tmp", mode=0o1777).dir("usr/sbin")
    return tree.dir("var/spool/mail").dir("var/www").layer()


def libraries(program: str | Path) -> list[str]:
    """Every shared object ``ldd`` says ``program`` loads (the dynamic loader included), at the paths the
    loader looks for them, so a copy of each at the same path in an image serves it there."""
    out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)", out)))


def busybox_libraries() -> list[str]:
    return libraries(debian_busybox())


def program_files(program: str) -> list[str]:
    """``program`` and the libraries it loads beyond those busybox_base() has already."""
    return [program, *sorted(set(libraries(program)) - set(busybox_libraries()))]
