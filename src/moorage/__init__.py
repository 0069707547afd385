"""Moorage: a Kubernetes container runtime serving CRI v1 on a unix socket."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moorage")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
