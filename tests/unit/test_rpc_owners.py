"""The README's table of RPC owners is whole and true: every RPC of the CRI descriptor is in it once, and every
module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import moorage
from moorage.cri import IMAGE_SERVICE, RUNTIME_SERVICE

ROOT = Path(moorage.__file__).parent
README = ROOT.parents[1] / "README.md"


def owners() -> dict[str, str]:
    text = README.read_text()
    table = text[text.index("| RPC | owner |") :].split("\n\n")[0]
    found: dict[str, str] = {}
    for row in table.splitlines()[2:]:
        rpcs, owner = row.strip("|").split("|")
        module = re.search(r"`([\w/]+\.py)`", owner)
        assert module, row
        for rpc in rpcs.split(","):
            assert rpc.strip() not in found, f"{rpc.strip()} is in the table twice"
            found[rpc.strip()] = module.group(1)
    return found


def test_every_rpc_has_one_owner_that_exists() -> None:
    table = owners()
    rpcs = {m.name for m in RUNTIME_SERVICE.methods} | {m.name for m in IMAGE_SERVICE.methods}
    assert set(table) == rpcs
    assert [module for module in table.values() if not (ROOT / module).is_file()] == []
