"""``moorage node setup``: make the kernel settings ``moorage check`` asks for hold now and after a reboot.

It writes ``<etc>/modules-load.d/moorage.conf`` (overlay, br_netfilter) and ``<etc>/sysctl.d/99-moorage.conf`` (the
three forwarding sysctls), loads each module that is not present (``modprobe``; built-in ones need nothing), then
writes each sysctl that differs under ``<proc>/sys``. Every step compares first, so a second run changes nothing.
The /etc root, the host roots and the modprobe command are parameters, so tests never touch the host.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from moorage.node.preflight import HOST, MODULES, SYSCTLS, HostRoots, module_presence, read_sysctl

MODULES_LOAD_FILE = Path("modules-load.d/moorage.conf")
SYSCTL_FILE = Path("sysctl.d/99-moorage.conf")
MODPROBE_TIMEOUT = 60.0
HEADER = "# Written by `moorage node setup`; it rewrites this file when run again.\n"


class SetupError(Exception):
    """A step of the setup failed; the message names the file or command and why."""


def modules_load_text() -> str:
    """The modules-load.d(5) file: the modules loaded at every boot."""
    return HEADER + "".join(f"{name}\n" for name in MODULES)


def sysctl_text() -> str:
    """The sysctl.d(5) file: the values applied at every boot."""
    return HEADER + "".join(f"{name} = {value}\n" for name, value in SYSCTLS.items())


def write_file(path: Path, text: str) -> str | None:
    """Write ``text`` to ``path`` atomically (mode 0644) unless it already holds it; what changed, or None."""
    try:
        if path.read_text() == text:
            return None
        verb = "rewrote"
    except FileNotFoundError:
        verb = "wrote"
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise SetupError(f"cannot write {path}: {exc.strerror}") from exc
    return f"{verb} {path}"


def load_modules(roots: HostRoots, modprobe: Sequence[str]) -> Iterator[str]:
    """``modprobe`` each of :data:`MODULES` not already present (loaded or built in); yields what it loaded."""
    for name in MODULES:
        if module_presence(name, roots):
            continue
        argv = [*modprobe, name]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=MODPROBE_TIMEOUT, check=False)
        except FileNotFoundError as exc:
            raise SetupError(f"cannot run {argv[0]}: not found (Debian: apt-get install kmod)") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"cannot run {' '.join(argv)}: {exc}") from exc
        if proc.returncode != 0:
            reason = proc.stderr.strip() or proc.stdout.strip() or "no output"
            raise SetupError(f"{' '.join(argv)} exited {proc.returncode}: {reason}")
        yield f"loaded module {name} ({' '.join(argv)})"


def apply_sysctls(roots: HostRoots) -> Iterator[str]:
    """Write each of :data:`SYSCTLS` whose current value differs; yields what it set."""
    for name, want in SYSCTLS.items():
        path = roots.sysctl_path(name)
        current = read_sysctl(name, roots)
        if current == want:
            continue
        if current is None:
            hint = ": is br_netfilter loaded?" if name.startswith("net.bridge.") else ""
            raise SetupError(f"cannot set {name}: {path} does not exist{hint}")
        try:
            path.write_text(f"{want}\n")
        except OSError as exc:
            raise SetupError(f"cannot write {want!r} to {path}: {exc.strerror}") from exc
        yield f"set {name} = {want} (was {current})"


def steps(
    etc_dir: Path = Path("/etc"), roots: HostRoots = HOST, modprobe: Sequence[str] = ("modprobe",)
) -> Iterator[str]:
    """Persist, then apply, the node's kernel settings; yields one line per change as it is made.

    Raises :class:`SetupError` at the first step that fails; the changes yielded before it stay made.
    """
    for path, text in ((MODULES_LOAD_FILE, modules_load_text()), (SYSCTL_FILE, sysctl_text())):
        change = write_file(etc_dir / path, text)
        if change:
            yield change
    yield from load_modules(roots, modprobe)
    yield from apply_sysctls(roots)


def setup(etc_dir: Path = Path("/etc"), roots: HostRoots = HOST, modprobe: Sequence[str] = ("modprobe",)) -> list[str]:
    """Every change :func:`steps` makes (empty: nothing to change)."""
    return list(steps(etc_dir, roots, modprobe))
