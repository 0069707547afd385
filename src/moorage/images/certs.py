"""Per-registry TLS from ``certs.d`` directories (containers-certs.d(5), the layout CRI-O, podman and docker read).

For a registry ``host[:port]``, the first of ``image.certs_dirs`` holding a directory of that exact name
decides (containers/image's rule; later directories are not merged in)::

    /etc/containers/certs.d/registry.example.com:5000/
        ca.crt          # *.crt: CA certificates trusted for this host, on top of the node's CA store
        client.cert     # *.cert + *.key of the same base name: a client certificate for mutual TLS
        client.key

Only the first client pair in name order is presented (Python's TLS takes one chain). A ``.cert`` without its
``.key`` (or the reverse), or a file that does not parse, fails the pull with FAILED_PRECONDITION naming the
file: a half-configured host must not silently fall back to no client certificate. Clients are cached by the
directory's contents (names, sizes and mtimes), so an edit applies to the next pull without a restart.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from moorage.errors import FailedPrecondition


@dataclass(frozen=True)
class HostCerts:
    """What a ``certs.d/<host>`` directory holds, with a key that changes whenever its files change."""

    directory: Path
    ca_files: tuple[Path, ...]
    client_pairs: tuple[tuple[Path, Path], ...]
    stamp: tuple[tuple[str, int, int], ...]


def find(dirs: tuple[str, ...], host: str) -> HostCerts | None:
    """The certs.d entry for ``host`` (``name[:port]``) in the first of ``dirs`` that has one."""
    for base in dirs:
        directory = Path(base) / host
        if directory.is_dir():
            return _read(directory)
    return None


def _read(directory: Path) -> HostCerts:
    try:
        entries = sorted((e for e in os.scandir(directory) if e.is_file()), key=lambda e: e.name)
    except OSError as exc:
        raise FailedPrecondition(f"certs.d: cannot read {directory}: {exc.strerror or exc}") from None
    names = {e.name for e in entries}
    cas, pairs = [], []
    for entry in entries:
        path = directory / entry.name
        if entry.name.endswith(".crt"):
            cas.append(path)
        elif entry.name.endswith(".cert"):
            key = entry.name.removesuffix(".cert") + ".key"
            if key not in names:
                raise FailedPrecondition(f"certs.d: client certificate {path} has no key {directory / key}")
            pairs.append((path, directory / key))
        elif entry.name.endswith(".key"):
            cert = entry.name.removesuffix(".key") + ".cert"
            if cert not in names:
                raise FailedPrecondition(f"certs.d: key {path} has no client certificate {directory / cert}")
    stamp = tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
    return HostCerts(directory, tuple(cas), tuple(pairs), stamp)


def context(certs: HostCerts | None, *, verify: bool) -> ssl.SSLContext:
    """A client context: the node's CA store plus ``certs``' CAs (or no verification), and its client cert."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certs is None:
        return ctx
    for ca in certs.ca_files:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise FailedPrecondition(f"certs.d: CA certificate {ca} is unusable: {exc}") from None
    for cert, key in certs.client_pairs[:1]:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise FailedPrecondition(f"certs.d: client certificate {cert} with key {key} is unusable: {exc}") from None
    return ctx
