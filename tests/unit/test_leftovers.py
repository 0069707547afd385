"""Finding what nothing owns, and the mounts under it, against a temp dir and a mountinfo of the test's own."""

from __future__ import annotations

from pathlib import Path

from moorage.node import leftovers

MOUNTINFO = """\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 0:5 / {d}/a rw - tmpfs x rw
31 30 0:6 / {d}/a/shm rw - tmpfs shm rw
32 30 0:4 / {d}/a/ns/net rw - nsfs nsfs rw
33 22 0:7 / {d}/ab rw - tmpfs y rw
34 22 0:8 / {d}/with\\040space rw - tmpfs z rw
"""


def test_strays_are_the_entries_nothing_owns(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    assert leftovers.strays(tmp_path, {"b"}) == [tmp_path / "a", tmp_path / "c"]
    assert leftovers.strays(tmp_path / "missing", set()) == []


def test_mounts_under_a_path_deepest_first_and_only_there(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(MOUNTINFO.format(d=tmp_path))
    points = leftovers.mounts_under(tmp_path / "a", proc=proc)
    assert points[-1] == f"{tmp_path}/a"
    assert sorted(points[:2]) == [f"{tmp_path}/a/ns/net", f"{tmp_path}/a/shm"]  # not {tmp_path}/ab
    assert leftovers.mounts_under(tmp_path / "with space", proc=proc) == [f"{tmp_path}/with space"]


def test_remove_tree_removes_directories_files_and_symlinks(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text("")
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "f").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "d")
    for name in ("l", "d", "f"):
        leftovers.remove_tree(tmp_path / name, proc=proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proc"]
