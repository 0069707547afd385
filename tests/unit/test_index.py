from __future__ import annotations

from dataclasses import dataclass

import pytest

from moorage.errors import AmbiguousId
from moorage.state.index import Index


@dataclass(frozen=True)
class Rec:
    id: str
    created_at: int
    group: str = ""


def test_resolve_exact_prefix_missing_and_ambiguous() -> None:
    index: Index[Rec] = Index("pod sandbox")
    index.load([Rec("abc123", 2), Rec("abd456", 1)])
    assert index.resolve("abc123") == "abc123"
    assert index.resolve("abd") == "abd456"
    assert index.resolve("zzz") is None
    with pytest.raises(AmbiguousId, match="'ab' is a prefix of more than one pod sandbox id"):
        index.resolve("ab")


def test_put_replaces_drop_forgets_and_all_is_oldest_first() -> None:
    index: Index[Rec] = Index("container")
    index.put(Rec("b", 5, "x"))
    index.put(Rec("a", 7, "y"))
    index.put(Rec("c", 1, "x"))
    assert [r.id for r in index.all()] == ["c", "b", "a"]
    assert [r.id for r in index.all(lambda r: r.group == "x")] == ["c", "b"]
    index.put(Rec("c", 9, "y"))
    assert index.get("c") == Rec("c", 9, "y")
    index.drop("c")
    index.drop("c")
    assert index.get("c") is None
    assert len(index) == 2


def test_generation_moves_on_every_change_and_only_then() -> None:
    index: Index[Rec] = Index("container")
    seen = [index.generation]
    index.load([Rec("a", 1)])
    seen.append(index.generation)
    index.put(Rec("b", 2))
    seen.append(index.generation)
    index.all(), index.get("a"), index.resolve("a")
    assert index.generation == seen[-1]
    index.drop("zzz")  # nothing dropped: nothing changed
    assert index.generation == seen[-1]
    index.put(Rec("a", 3))
    seen.append(index.generation)
    assert [r.id for r in index.all()] == ["b", "a"]  # the order follows the change
    index.drop("a")
    seen.append(index.generation)
    assert len(set(seen)) == len(seen)
    listed = index.all()
    listed.clear()  # a caller's list is its own
    assert [r.id for r in index.all()] == ["b"]
