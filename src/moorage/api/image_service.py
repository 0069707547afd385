"""CRI ImageService. Every RPC answers UNIMPLEMENTED until the image issue lands."""

from __future__ import annotations


class ImageService:
    """No RPC served yet: each answers UNIMPLEMENTED through :mod:`moorage.api.handlers`."""
