"""What a registry may send as a manifest or config that is no manifest: an InvalidImage naming it, never another
exception (a mirror's garbage must let the pull go on to the next endpoint)."""

from __future__ import annotations

import pytest

from moorage.errors import InvalidImage
from moorage.images import manifest


def test_json_nested_deeper_than_the_parser_goes_is_an_invalid_image() -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(InvalidImage, match="nested too deep"):
        manifest.parse(body, manifest.OCI_MANIFEST, "mirror.example/app:1")
    with pytest.raises(InvalidImage, match="nested too deep"):
        manifest.parse_config(body, "config of mirror.example/app:1")
