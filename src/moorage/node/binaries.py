"""Finding the host's binaries (OCI runtimes, conmon, CRIU) and asking them their version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

VERSION_TIMEOUT = 10.0


def find_binary(path: str, search_path: str | None = None) -> Path | None:
    """``path`` if it has a slash and is an executable file, else its first match in ``search_path`` (default:
    $PATH): how a configured binary (``runtime.conmon``, a handler's ``path``) is found."""
    if "/" in path:
        return Path(path) if os.path.isfile(path) and os.access(path, os.X_OK) else None
    found = shutil.which(path, path=search_path)
    return Path(found) if found else None


def binary_version(binary: Path) -> str:
    """The version ``binary --version`` reports (``runc version 1.1.5`` → ``1.1.5``). Raises OSError."""
    try:
        proc = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"{binary} --version did not answer within {VERSION_TIMEOUT:g}s") from exc
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        raise OSError(f"{binary} --version exited {proc.returncode}: {reason[0] if reason else 'no output'}")
    first = next((line.strip() for line in proc.stdout.splitlines() if line.strip()), "")
    match = re.search(r"\bversion:?\s+v?(\S+)", first, re.IGNORECASE)
    return match.group(1) if match else first or "unknown"


def resolve(path: str) -> str:
    """The binary ``path`` names, found as :func:`find_binary` finds it, or ``path`` itself when it is not there
    (running it then fails with the OCI runtime's or conmon's own error, which names it)."""
    found = find_binary(path)
    return str(found) if found else path
