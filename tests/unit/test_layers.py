"""The import direction of the package (../shared/STYLE.md): the edges ``api/``, ``streaming/`` and ``cli/``
import the domain (``runtime/``, ``images/``), which imports ``state/``, ``store/`` and ``node/``; nothing below
imports upward, and only the composition root (``daemon.py``, started by ``cli``) knows every part."""

from __future__ import annotations

import ast
from pathlib import Path

import moorage

ROOT = Path(moorage.__file__).parent
SHARED = {"errors", "config", "defaults", "durable"}
ALLOWED = {
    "state": SHARED,
    "store": SHARED,
    "node": SHARED,
    "observe": SHARED | {"node"},
    "images": SHARED | {"store", "state"},
    "runtime": SHARED | {"api.cri", "images", "node", "observe", "state", "store"},
    "streaming": SHARED | {"api.cri", "runtime"},
    "api": SHARED | {"api.cri", "images", "observe", "runtime", "state", "streaming"},
}
"""What each layer may import besides itself (``api.cri`` is the generated CRI messages every layer speaks)."""


def imports() -> dict[str, set[str]]:
    """Layer (the first package below ``moorage``, or the module) → the layers it imports."""
    found: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if "_gen" in parts:
            continue
        layer = parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "moorage":
                names = node.module.split(".")[1:] or [alias.name for alias in node.names]
                target = "api.cri" if names[:2] == ["api", "cri"] else names[0]
                if target != layer:
                    found.setdefault(layer, set()).add(target)
    return found


def test_each_layer_imports_only_what_is_below_it() -> None:
    graph = imports()
    for layer, allowed in ALLOWED.items():
        assert graph.get(layer, set()) <= allowed, f"{layer} imports {sorted(graph[layer] - allowed)}"


def test_only_the_cli_starts_the_daemon_and_nothing_imports_the_cli() -> None:
    graph = imports()
    assert sorted(layer for layer, targets in graph.items() if "daemon" in targets) == ["cli"]
    assert [layer for layer, targets in graph.items() if "cli" in targets] == []
