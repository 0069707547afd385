"""The layout of the tests themselves: no module under tests/ imports a test module (a ``test_*.py``).

What tests share (helpers, constants, pytest fixtures) lives in helper modules (tests/fixtures/, a package's
``daemon.py`` or conftest.py); a test module that imports another one runs that module's import side effects and
collects its fixtures by accident, and moving a test then breaks an unrelated one. Each import, at the top or
inside a function, relative or absolute, ``from package import test_x`` too, is resolved to the module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def _package_of(path: Path) -> list[str]:
    return list(path.relative_to(REPO).with_suffix("").parts[:-1])


def _is_test_module(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1].startswith("test_")


def imported_test_modules(source: str, path: Path) -> list[str]:
    """The test modules ``source`` (the text of the module at ``path``) imports, as dotted names."""
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if any(p.startswith("test_") for p in alias.name.split("."))]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if any(p.startswith("test_") for p in module.split(".")):
                found.append(module)
            else:  # from package import test_x: a module of the package, if it names one
                found += [f"{module}.{a.name}" for a in node.names if _is_test_module(a.name)]
    return found


def test_the_checker_finds_every_form_of_import() -> None:
    path = TESTS / "integration" / "test_example.py"
    source = (
        "import tests.unit.test_spec\n"
        "from tests.integration.test_images import rpc_error\n"
        "from tests.integration import test_containers\n"
        "from . import test_pods\n"
        "from .test_stats import container_stats\n"
        "def f() -> None:\n"
        "    from tests.unit.test_cdi import x\n"
        "from tests.fixtures.pods import Pod\n"
        "from tests.integration.daemon import DaemonProcess\n"
        "from . import daemon\n"
    )
    assert imported_test_modules(source, path) == [
        "tests.unit.test_spec",
        "tests.integration.test_images",
        "tests.integration.test_containers",
        "tests.integration.test_pods",
        "tests.integration.test_stats",
        "tests.unit.test_cdi",
    ]


def test_no_module_under_tests_imports_a_test_module() -> None:
    modules = sorted(TESTS.rglob("*.py"))
    assert len(modules) > 50  # the walk found the tests
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in modules
        for name in imported_test_modules(path.read_text(), path)
    ]
    assert offenders == [], "move what they share into tests/fixtures/:\n" + "\n".join(offenders)
