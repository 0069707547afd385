"""The exception tree drawn in moorage.errors' docstring is the real one: every class, under its real parent."""

from __future__ import annotations

import inspect
import re

from moorage import errors


def drawn_tree() -> dict[str, str]:
    """Class name → the parent the docstring draws it under (the nearest class drawn further left above it)."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^    (?:[│ ]*[├└]── )?([A-Z]\w+)\s", line)
        if not match:
            continue
        column = match.start(1)
        while stack and stack[-1][0] >= column:
            stack.pop()
        if stack:
            parents[match.group(1)] = stack[-1][1]
        stack.append((column, match.group(1)))
    return parents


def test_every_error_class_is_drawn_under_its_parent() -> None:
    real = {
        name: cls.__mro__[1].__name__
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.MoorageError) and cls is not errors.MoorageError and cls.__module__ == errors.__name__
    }
    assert drawn_tree() == real
