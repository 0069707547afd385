"""Benchmark: unpacking one image layer with ``apply_layer`` against GNU tar.

The layer is generated: ~20k small files (1-16 KiB) in nested directories and a few files of several MiB,
~200 MB uncompressed, text-like and binary-like content, then gzip level 6 (what ``docker push`` produces).
Each way of unpacking runs RUNS times, the ways interleaved, each run into a fresh directory on the same
filesystem, after a ``sync`` so one run's writeback does not slow the next. Trees are removed only at the end:
on ext4 without a journal, inodes freed moments ago are skipped one by one by the inode allocator (see
``recently_deleted`` in fs/ext4/ialloc.c), which would slow whichever run follows a removal. Not a test:
nothing here asserts a time.

    .venv/bin/python bench/unpack.py [--dir DIR]

``--dir`` picks the filesystem the layer and the trees go to (default: the temp dir); a tmpfs there shows the
unpackers' own CPU cost, without the disk's.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from moorage.images.unpack import apply_layer

RUNS = 3
SMALL_FILES = 20_000
LARGE_FILES = 6
LARGE_SIZE = 5 << 20
DIRS = 400
SEED = 1


def content_pool(rng: random.Random) -> bytes:
    """32 MiB to slice file contents from: 3/4 text-like (Zipf-distributed words, compresses ~3x), 1/4 random
    (compressed binaries); the whole layer compresses about 2x, like real images."""
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10))) for _ in range(2000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    text = b" ".join(rng.choices(words, weights, k=(24 << 20) // 5))[: 24 << 20]
    return text + rng.randbytes(8 << 20)


def make_layer(tar_path: Path) -> int:
    """Write the uncompressed layer; returns its size."""
    rng = random.Random(SEED)
    pool = content_pool(rng)
    dirs = ["usr", "usr/lib", "usr/share", "opt/app"]
    while len(dirs) < DIRS:
        dirs.append(f"{rng.choice(dirs)}/d{len(dirs)}")
    mtime = 1_700_000_000
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        sizes = [rng.randint(1 << 10, 16 << 10) for _ in range(SMALL_FILES)] + [LARGE_SIZE] * LARGE_FILES
        for i, size in enumerate(sizes):
            start = rng.randrange(0, len(pool) - size)
            info = tarfile.TarInfo(f"{rng.choice(dirs)}/f{i}")
            info.size, info.mode, info.mtime = size, 0o644, mtime
            info.uid = info.gid = 0 if i % 10 else 1000
            tar.addfile(info, io.BytesIO(pool[start : start + size]))
    return tar_path.stat().st_size


def gzip_file(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, gzip.open(dst, "wb", compresslevel=6) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def timed(dest: Path, run: Callable[[Path], None]) -> float:
    """Seconds ``run`` takes to unpack into ``dest``, a new directory."""
    dest.mkdir()
    subprocess.run(["sync"], check=True)
    began = time.perf_counter()
    run(dest)
    return time.perf_counter() - began


def gnu_tar(blob: Path, flags: str) -> Callable[[Path], None]:
    def run(dest: Path) -> None:
        subprocess.run(["tar", "--same-owner", "--xattrs", flags, str(blob), "-C", str(dest)], check=True)

    return run


def ours(blob: Path) -> Callable[[Path], None]:
    def run(dest: Path) -> None:
        apply_layer(blob, dest)

    return run


def main() -> None:
    """Unpack the generated layer every way, RUNS times each; print the median times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the layer and unpack it")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: both unpackers set file ownership")
    with tempfile.TemporaryDirectory(prefix="moorage-bench-unpack-", dir=args.dir) as name:
        work = Path(name)
        fs = subprocess.run(["stat", "-f", "-c", "%T", name], capture_output=True, text=True, check=True).stdout
        plain, gz = work / "layer.tar", work / "layer.tar.gz"
        size = make_layer(plain)
        gzip_file(plain, gz)
        print(f"layer: {size / 1e6:.0f} MB uncompressed, {gz.stat().st_size / 1e6:.0f} MB gzip -6, "
              f"{SMALL_FILES + LARGE_FILES} files in {DIRS} directories; unpacked on {fs.strip()}, "
              f"median of {RUNS} runs")  # fmt: skip
        cases = [
            ("apply_layer  gzip", ours(gz)),
            ("tar -xzf     gzip", gnu_tar(gz, "-xzf")),
            ("apply_layer  plain", ours(plain)),
            ("tar -xf      plain", gnu_tar(plain, "-xf")),
        ]
        times: dict[str, list[float]] = {label: [] for label, _ in cases}
        for i in range(RUNS):
            for n, (label, run) in enumerate(cases):
                times[label].append(timed(work / f"dest-{i}-{n}", run))
        for label, seconds in ((label, statistics.median(t)) for label, t in times.items()):
            print(f"{label:20} {seconds:7.3f} s  {size / 1e6 / seconds:7.1f} MB/s")


if __name__ == "__main__":
    main()
