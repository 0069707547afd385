"""Benchmark: pull + unpack of a multi-layer image of about 200 MB from a local docker-registry.

Cold: a fresh daemon root, every layer downloaded, verified and unpacked. Warm: the image is already there,
so a pull re-reads the manifest only (what the kubelet's "Always" pull policy costs). For reference, the
same image fetched by skopeo into a directory (download and verify, no unpack) and then unpacked by GNU tar.

Run by hand (`make bench`); figures go in README.md. Not a test: nothing here asserts a time.
Usage: python bench/pull.py [total-MiB] [layers] [runs]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.fixtures import images as fixtures
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def moorage_runs(ref: str, host: str, runs: int) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    for _ in range(runs):
        node = DaemonProcess()
        node.log_level = "warning"
        try:
            node.trust_registry(host)
            node.start()
            with node.client() as client:
                cold.append(timed(lambda c=client: c.pull_image(ref)))  # type: ignore[misc]
                warm.append(timed(lambda c=client: c.pull_image(ref)))  # type: ignore[misc]
        finally:
            node.cleanup()
    return cold, warm


def skopeo_tar_runs(ref: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        work = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
        try:
            began = time.perf_counter()
            fixtures.skopeo_copy(f"docker://{ref}", f"dir:{work / 'dir'}")
            rootfs = work / "rootfs"
            rootfs.mkdir()
            for blob in sorted((work / "dir").iterdir()):
                if blob.stat().st_size > 1 << 20:
                    subprocess.run(
                        ["tar", "--same-owner", "--xattrs", "-xzf", str(blob), "-C", str(rootfs)], check=True
                    )
            subprocess.run(["sync", "-f", str(rootfs)], check=True)
            out.append(time.perf_counter() - began)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    total_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    layer_count = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    work = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    try:
        with Registry() as registry:
            layers = fixtures.big_image(work / "blobs", total_mb, layer_count)
            img = fixtures.image([fixtures.busybox_layer(), *layers])
            fixtures.push(registry, "bench/big", "1", img)
            ref = f"{registry.host}/bench/big:1"
            compressed = sum(layer.size for layer in img.layers) / 1e6
            cold, warm = moorage_runs(ref, registry.host, runs)
            baseline = skopeo_tar_runs(ref, runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"image: {len(img.layers)} layers, {compressed:.0f} MB compressed, {total_mb} MiB unpacked; {runs} runs")
    for label, times in (("moorage cold pull", cold), ("skopeo + GNU tar", baseline), ("moorage warm pull", warm)):
        median = statistics.median(times)
        rate = f"{compressed / median:7.1f} MB/s" if "warm" not in label else "   (manifest only)"
        print(f"{label:20s} median {median * 1000:8.0f} ms  {rate}")


if __name__ == "__main__":
    main()
