"""The import direction of the package (../shared/STYLE.md, README "Architecture"), checked module by module.

Every module belongs to one layer: a package below ``moorage`` (``images``, ``node``, ...), a room of the runtime
(``runtime.pods``, ``runtime.containers``, ``runtime.exec``, ``runtime.spec``; ``runtime`` itself for what the
rooms share), or a top-level module (``errors``, ``daemon``, ...). Each import of every module, at the top or
inside a function, is resolved to the module it names and checked against what its layer may import. Nothing is
exempt: the generated CRI types are the floor (``cri``) every layer may import, and a module of a layer not
listed here fails the test until its place is decided.
"""

from __future__ import annotations

import ast
from pathlib import Path

import moorage

ROOT = Path(moorage.__file__).parent
ROOMS = ("pods", "containers", "exec", "spec")
FLOOR = {"moorage", "cri", "errors", "defaults", "durable", "config"}
"""What every layer may import: the version, the CRI types, the error tree, the defaults and the configuration."""
ALLOWED: dict[str, set[str]] = {
    "cri": set(),
    "errors": set(),
    "defaults": set(),
    "durable": {"errors"},
    "config": {"errors", "defaults"},
    "moorage": set(),
    "state": FLOOR,
    "store": FLOOR | {"state"},
    "node": FLOOR,
    "observe": FLOOR | {"node", "state"},
    "images": FLOOR | {"store", "state"},
    "runtime": FLOOR | {"node", "state"},
    "runtime.spec": FLOOR | {"node"},
    "runtime.containers": FLOOR | {"runtime", "runtime.spec", "images", "observe", "node", "state", "store"},
    "runtime.pods": FLOOR
    | {"runtime", "runtime.spec", "runtime.containers", "images", "observe", "node", "state", "store"},
    "runtime.exec": FLOOR | {"runtime", "runtime.containers", "runtime.pods", "node", "state"},
    "streaming": FLOOR | {"runtime.exec"},
    "api": FLOOR
    | {"images", "observe", "runtime", "runtime.spec", "runtime.containers", "runtime.pods", "runtime.exec"}
    | {"state", "store", "streaming"},
    "daemon": FLOOR
    | {"api", "images", "node", "observe", "runtime.containers", "runtime.pods", "runtime.exec"}
    | {"state", "store", "streaming"},
    "cli": FLOOR | {"daemon", "node", "streaming"},
}
"""What each layer may import besides itself."""


def layer_of(module: str) -> str:
    """``moorage.runtime.pods.sandboxes`` → ``runtime.pods``; ``moorage.errors`` → ``errors``."""
    parts = module.split(".")[1:]
    if not parts:
        return "moorage"
    if parts[0] == "runtime" and len(parts) > 1 and parts[1] in ROOMS:
        return f"runtime.{parts[1]}"
    return parts[0]


def module_name(path: Path) -> str:
    parts = ["moorage", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, package: str) -> set[str]:
    """The moorage modules (or packages) a module's imports name, relative ones resolved."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "moorage"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "moorage":
                continue
            for alias in node.names:  # a name that is a module counts as that module
                candidate = f"{base}.{alias.name}"
                is_module = (ROOT / Path(*candidate.split(".")[1:])).with_suffix(".py").exists() or (
                    ROOT / Path(*candidate.split(".")[1:]) / "__init__.py"
                ).exists()
                found.add(candidate if is_module else base)
    return found


def modules() -> dict[str, set[str]]:
    """Every module of the package (the generated CRI stubs aside) → the moorage modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "_gen" in path.parts:
            continue
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imported(ast.parse(path.read_text()), package)
    return graph


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(name for name in modules() if layer_of(name) not in ALLOWED)
    assert unplaced == [], f"modules of no layer (add their layer to ALLOWED): {unplaced}"


def test_each_module_imports_only_what_its_layer_may() -> None:
    wrong = []
    for name, targets in modules().items():
        layer = layer_of(name)
        for target in sorted(targets):
            if layer_of(target) != layer and layer_of(target) not in ALLOWED.get(layer, set()):
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_the_allowed_graph_has_no_cycle() -> None:
    """So the layers have an order: ``api`` above the rooms, ``runtime.pods`` above ``runtime.containers``."""
    done: set[str] = set()

    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, f"cycle: {' → '.join((*path, layer))}"
        if layer in done:
            return
        for below in ALLOWED[layer]:
            visit(below, (*path, layer))
        done.add(layer)

    for layer in ALLOWED:
        visit(layer, ())


def test_only_the_cli_starts_the_daemon_and_nothing_imports_the_cli() -> None:
    graph = modules()
    starters = {layer_of(name) for name, targets in graph.items() if any(layer_of(t) == "daemon" for t in targets)}
    assert starters == {"cli"}
    importers = {layer_of(name) for name, targets in graph.items() if any(layer_of(t) == "cli" for t in targets)}
    assert importers <= {"cli"}
