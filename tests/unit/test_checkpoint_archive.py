"""The checkpoint archive's parts (moorage.runtime.containers.checkpoint.archive) and the CRIU check (…checkpoint.criu),
on temp dirs and on scripts of the test's own standing in for criu."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from moorage.errors import FailedPrecondition, InvalidArgument
from moorage.runtime.containers.checkpoint import archive
from moorage.runtime.containers.checkpoint.criu import Criu, reason_of
from tests.fixtures.checkpoints import archive_of

NODE_CRIU_OUTPUT = """\
Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds
Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable
Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.
Error (criu/crtools.c:260): Could not initialize kernel features detection.
"""


def test_criu_s_reason_is_its_error_lines_without_source_locations() -> None:
    assert reason_of(NODE_CRIU_OUTPUT) == (
        "vdso: Unexpected rt vDSO area bounds; vdso: Failed to fill self vdso symtable; "
        "kerndat_vdso_fill_symtable failed when initializing kerndat.; Could not initialize kernel features detection."
    )
    assert reason_of("Warn (criu/cr-check.c:1): no userfaultfd\n") == "no userfaultfd"  # no Error line: all of it
    assert reason_of("") == ""


def fake_criu(tmp_path: Path, output: str, status: int) -> tuple[Path, Path]:
    """A criu that prints ``output``, exits ``status`` and counts its runs in a file."""
    runs = tmp_path / "runs"
    script = tmp_path / "criu"
    script.write_text(f"#!/bin/sh\necho run >> {runs}\nprintf '%s' '{output}' >&2\nexit {status}\n")
    script.chmod(0o755)
    return script, runs


def test_a_failing_criu_check_refuses_with_its_reason_and_is_asked_once(tmp_path: Path) -> None:
    script, runs = fake_criu(tmp_path, "Error (criu/cr-check.c:9): the kernel has no soft-dirty tracking\n", 1)
    criu = Criu(str(script))

    async def twice() -> list[str]:
        messages = []
        for _ in range(2):
            with pytest.raises(FailedPrecondition) as refused:
                await criu.require()
            messages.append(refused.value.message)
        return messages

    messages = asyncio.run(twice())
    assert messages == ["CRIU cannot checkpoint on this node: the kernel has no soft-dirty tracking"] * 2
    assert runs.read_text() == "run\n"


def test_a_working_criu_check_lets_checkpoints_through(tmp_path: Path) -> None:
    script, _ = fake_criu(tmp_path, "Looks good.\n", 0)
    assert asyncio.run(Criu(str(script)).check()).ok


def test_no_criu_installed_is_the_reason(tmp_path: Path) -> None:
    result = asyncio.run(Criu(str(tmp_path / "no-such-criu")).check())
    assert not result.ok
    assert "not installed" in result.reason
    assert "no-such-criu" in result.reason


def test_the_rootfs_diff_holds_changes_and_lists_deletions_without_mount_points(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "data").mkdir(parents=True)
    (upper / "data" / "counter").write_text("42\n")
    (upper / "etc").mkdir()
    (upper / "etc" / "hosts").write_text("")  # a bind mount's target, made by the runtime
    (upper / "proc").mkdir()  # the runtime's mount point
    (upper / "link").symlink_to("data/counter")
    os.mknod(upper / "etc" / "motd", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # overlayfs's whiteout
    tar_path = tmp_path / "rootfs-diff.tar"
    skip = archive.mount_points({"mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/x"}]})

    deleted = archive.rootfs_diff(upper, tar_path, skip)

    assert deleted == ["/etc/motd"]
    with tarfile.open(tar_path) as tar:
        names = sorted(tar.getnames())
        assert names == ["data", "data/counter", "etc", "link"]
        counter = tar.extractfile("data/counter")
        assert counter is not None
        assert counter.read() == b"42\n"
        assert tar.getmember("link").issym()
        assert tar.getmember("link").linkname == "data/counter"


def test_bind_mounts_records_each_source_s_type_and_mode(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o750)
    (tmp_path / "file").write_text("x")
    (tmp_path / "file").chmod(0o640)
    spec = {
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": str(tmp_path / "dir")},
            {"destination": "/etc/hosts", "type": "bind", "source": str(tmp_path / "file")},
        ]
    }
    assert archive.bind_mounts(spec) == [
        {"source": str(tmp_path / "dir"), "destination": "/data", "file_type": "directory", "permissions": 0o750},
        {"source": str(tmp_path / "file"), "destination": "/etc/hosts", "file_type": "file", "permissions": 0o640},
    ]
    spec["mounts"].append({"destination": "/gone", "type": "bind", "source": str(tmp_path / "gone")})
    with pytest.raises(OSError, match=r"bind mount source .*gone of /gone"):
        archive.bind_mounts(spec)


def test_config_dump_times_are_rfc3339_with_nanoseconds() -> None:
    dump = archive.config_dump(
        container_id="c1", name="k8s_web", image="busybox", image_ref="sha256:ab", image_name="reg/busybox:1",
        runtime="runc", created_at=1_700_000_000_123_456_789, checkpointed_at=1_700_000_001_000_000_000,
    )  # fmt: skip
    assert dump["createdTime"] == "2023-11-14T22:13:20.123456789Z"
    assert dump["checkpointedTime"] == "2023-11-14T22:13:21.000000000Z"
    assert (dump["id"], dump["rootfsImageName"], dump["runtime"], dump["restored"]) == (
        "c1",
        "reg/busybox:1",
        "runc",
        False,
    )


def test_the_archive_holds_the_members_present_readable_by_root_only(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / "inventory.img").write_bytes(b"\x01")
    archive.write_json(work, archive.CONFIG_DUMP, {"id": "c1"})
    (work / "unrelated").write_text("not in the layout")
    location = tmp_path / "out" / "checkpoint.tar"
    location.parent.mkdir()

    archive.write(location, work)

    assert stat.S_IMODE(location.stat().st_mode) == 0o600
    with tarfile.open(location) as tar:
        assert sorted(tar.getnames()) == ["checkpoint", "checkpoint/inventory.img", "config.dump"]
        config = tar.extractfile("config.dump")
        assert config is not None
        assert json.loads(config.read()) == {"id": "c1"}
    assert os.listdir(location.parent) == ["checkpoint.tar"]


def test_a_failed_archive_leaves_nothing_behind(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive.write_json(work, archive.CONFIG_DUMP, {"id": "c1"})
    location = tmp_path / "checkpoint.tar"
    location.mkdir()  # the rename onto it fails
    with pytest.raises(IsADirectoryError):
        archive.write(location, work)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.tar", "work"]
    assert os.listdir(location) == []


def test_a_restore_unpacks_images_and_changes_and_deletes_only_inside_the_root(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    (rootfs / "etc" / "passwd").write_text("root\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("kept")
    (rootfs / "link").symlink_to(outside)  # a symlinked parent leading out of the root
    diff = io.BytesIO()
    with tarfile.open(fileobj=diff, mode="w") as changes:
        info = tarfile.TarInfo("counter")
        info.size = 3
        changes.addfile(info, io.BytesIO(b"41\n"))
    deleted = ["/etc/group", "/../outside/precious", "/link/precious", "/"]
    path = archive_of(
        tmp_path / "checkpoint.tar",
        {
            "checkpoint/inventory.img": b"images",
            "config.dump": b"{}",
            "rootfs-diff.tar": diff.getvalue(),
            "deleted.files": json.dumps(deleted).encode(),
        },
    )

    archive.unpack_for_restore(path, rootfs, tmp_path / "restore")

    assert (tmp_path / "restore" / "checkpoint" / "inventory.img").read_bytes() == b"images"
    assert not (tmp_path / "restore" / "config.dump").exists()
    assert (rootfs / "counter").read_text() == "41\n"
    assert not (rootfs / "etc" / "group").exists()
    assert (rootfs / "etc" / "passwd").exists()
    assert (outside / "precious").read_text() == "kept"


def test_a_restore_refuses_an_archive_whose_changes_lead_outside(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    diff = io.BytesIO()
    with tarfile.open(fileobj=diff, mode="w") as changes:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        changes.addfile(info, io.BytesIO(b"x"))
    path = archive_of(tmp_path / "checkpoint.tar", {"rootfs-diff.tar": diff.getvalue()})
    with pytest.raises(InvalidArgument, match=r"checkpoint archive .*checkpoint\.tar: .*escaped"):
        archive.unpack_for_restore(path, rootfs, tmp_path / "restore")
    assert not (tmp_path / "escaped").exists()


def test_only_a_tar_with_both_dumps_is_a_restore_source(tmp_path: Path) -> None:
    assert archive.restore_source("registry.example/busybox:1", "image") is None
    assert archive.restore_source(str(tmp_path / "absent.tar"), "image") is None
    full = archive_of(tmp_path / "full.tar", {"config.dump": b'{"id": "c1"}', "spec.dump": b'{"ociVersion": "1"}'})
    assert archive.restore_source(str(full), "image") == ({"id": "c1"}, {"ociVersion": "1"})
    half = archive_of(tmp_path / "half.tar", {"config.dump": b"{}"})
    with pytest.raises(InvalidArgument, match="not a checkpoint archive"):
        archive.restore_source(str(half), "image")
    (tmp_path / "text").write_text("not a tar")
    with pytest.raises(InvalidArgument, match="not a readable checkpoint archive"):
        archive.restore_source(str(tmp_path / "text"), "image")
