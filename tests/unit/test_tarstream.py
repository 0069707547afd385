"""The layer tar reader's bounds on what comes before a member: extended (PAX, GNU long-name) headers."""

from __future__ import annotations

import tarfile

import pytest

from moorage.errors import InvalidImage
from moorage.images.tarstream import EXT_HEADER_MAX, TarReader


def pax_header(records: dict[str, str]) -> bytes:
    """One PAX extended header block (its typeflag ``x``) with ``records``, padded."""
    body = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record)
        while len(str(length + len(str(length)))) != len(str(length)):
            length += 1
        length += len(str(length))
        body += str(length).encode() + record
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(body)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + body + b"\0" * (-len(body) % 512)


def member(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def read_all(data: bytes) -> list[str]:
    reader = TarReader(iter([data[i : i + 65536] for i in range(0, len(data), 65536)]))
    names = []
    while (found := reader.next()) is not None:
        names.append(found.name.decode())
    return names


def test_extended_headers_up_to_the_bound_are_read() -> None:
    data = pax_header({"SCHILY.xattr.user.a": "x" * (EXT_HEADER_MAX // 2)}) + member("f") + b"\0" * 1024
    assert read_all(data) == ["f"]


def test_chained_extended_headers_may_not_add_up_past_the_bound() -> None:
    """Each under the bound, together over it: refused before they are all held (Go takes 1 MiB per header)."""
    chained = b"".join(pax_header({f"SCHILY.xattr.user.{i}": "x" * (EXT_HEADER_MAX // 4)}) for i in range(5))
    with pytest.raises(InvalidImage, match="extended headers of"):
        read_all(chained + member("f") + b"\0" * 1024)
