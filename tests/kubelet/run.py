"""``python -m tests.kubelet.run [PYTEST_ARGS]``: tests/kubelet in a network namespace of its own.

The images are prepared first (that may fetch Debian's busybox package once per machine), then pytest is
re-executed under ``unshare --net``: the registry, the daemon, its CNI bridge, the kubelet and its pods all live
in that namespace, which vanishes with the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.critest.images import prepare

CHECKOUT = Path(__file__).resolve().parents[2]
NETNS_MARK = "MOORAGE_KUBELET_STARTED_IN_NETNS"


def main() -> None:
    prepare()
    here = str(os.stat("/proc/self/ns/net").st_ino)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kubelet", *sys.argv[1:]]
    os.chdir(CHECKOUT)
    os.execvpe("unshare", ["unshare", "--net", "--", *argv], {**os.environ, NETNS_MARK: here})


if __name__ == "__main__":
    main()
