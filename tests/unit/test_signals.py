"""Stop signals (runtime/containers/signals.py): CRI enum, image STOPSIGNAL strings and signal numbers."""

from __future__ import annotations

import signal

import pytest

from moorage.cri import pb
from moorage.errors import InvalidArgument
from moorage.runtime.containers import signals


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("SIGTERM", 15), ("term", 15), ("3", 3), ("SIGQUIT", 3), ("SIGRTMIN", 34), ("SIGRTMIN+3", 37),
        ("RTMAX-1", 63), ("SIGRTMAX", 64), ("SIGCLD", 17), ("SIGPOLL", 29), ("IOT", 6), ("SIGPWR", 30),
        ("bogus", None), ("99", None), ("0", None), ("33", None), ("SIGRTMIN-1", None), ("SIGRTMAX+1", None),
        ("", None),
    ],
)  # fmt: skip
def test_numbers_of_names(name: str, number: int | None) -> None:
    assert signals.number(name) == number


def test_every_cri_signal_goes_round_trip() -> None:
    for value in pb.Signal.values():
        if value == pb.Signal.SIGNAL_RUNTIME_DEFAULT:
            continue
        name = signals.from_enum(value)
        assert signals.to_enum(name) == value, name
        assert 0 < signals.to_send(name) <= signal.SIGRTMAX


def test_the_effective_signal() -> None:
    assert signals.effective(pb.Signal.SIGNAL_SIGUSR1, "SIGQUIT") == "SIGUSR1"
    assert signals.effective(pb.Signal.SIGNAL_RUNTIME_DEFAULT, "quit") == "SIGQUIT"
    assert signals.effective(pb.Signal.SIGNAL_RUNTIME_DEFAULT, "37") == "SIGRTMIN+3"
    assert signals.effective(pb.Signal.SIGNAL_RUNTIME_DEFAULT, None) == ""
    assert signals.effective(pb.Signal.SIGNAL_RUNTIME_DEFAULT, "WEIRD") == "WEIRD"  # kept; stopped with SIGTERM
    assert (signals.to_send("WEIRD"), signals.to_enum("WEIRD")) == (15, pb.Signal.SIGNAL_SIGTERM)
    assert (signals.to_send(""), signals.to_enum("")) == (15, pb.Signal.SIGNAL_SIGTERM)
    with pytest.raises(InvalidArgument, match=r"config\.stop_signal: unknown signal 99"):
        signals.effective(99, "")
