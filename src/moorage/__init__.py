"""Moorage: a Kubernetes container runtime serving CRI v1 on a unix socket."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed package's metadata when first asked for: importlib.metadata
    costs a client command tens of milliseconds it rarely needs."""
    if name != "__version__":
        raise AttributeError(f"module 'moorage' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        found = version("moorage")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found
