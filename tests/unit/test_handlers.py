"""The crun wrapper's pure parts: which mount a hybrid host's cgroup2 mount sits on."""

from __future__ import annotations

import pytest

from moorage.runtime.containers.handlers import parent_mount

HYBRID = ["/", "/proc", "/sys", "/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroupx"]


@pytest.mark.parametrize(
    ("path", "points", "parent"),
    [
        ("/sys/fs/cgroup/unified", HYBRID, "/sys/fs/cgroup"),
        ("/sys/fs/cgroup/unified", ["/", "/sys", "/sys/fs/cgroup/unified"], "/sys"),  # no tmpfs at /sys/fs/cgroup
        ("/sys/fs/cgroup/unified", ["/sys/fs/cgroup/unified"], "/"),
        ("/sys/fs/cgroupx", HYBRID, "/sys"),  # a sibling with a common prefix is not a parent
    ],
)
def test_parent_mount(path: str, points: list[str], parent: str) -> None:
    assert parent_mount(path, points) == parent
