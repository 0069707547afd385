"""Stop signals: the CRI ``Signal`` enum, an image's STOPSIGNAL string, and the signal numbers runc/crun send.

A container stops with ``ContainerConfig.stop_signal`` when the kubelet sets one (the pod's
``lifecycle.stopSignal``), else the image's STOPSIGNAL, else SIGTERM; the effective one is kept with the
container as a canonical name (``SIGTERM``, ``SIGRTMIN+3``) and reported in ``ContainerStatus.stop_signal``.
Real-time signals count from glibc's SIGRTMIN (34), as Docker, containerd and CRI-O number them.

Lifecycle::

    name = effective(config.stop_signal, image_config.get("StopSignal"))   # "SIGQUIT", stored with the container
    os.kill(pid, number(name))                                              # 3
    status.stop_signal = to_enum(name)                                      # pb.Signal.SIGNAL_SIGQUIT
"""

from __future__ import annotations

import re
import signal

from moorage.cri import pb
from moorage.errors import InvalidArgument

DEFAULT = "SIGTERM"
_REALTIME = re.compile(r"SIGRT(MIN|MAX)(?:([+-])(\d+))?")


def number(name: str) -> int | None:
    """The signal number of ``name`` (``SIGQUIT``, ``QUIT``, ``3``, ``SIGRTMIN+3``, ``RTMAX-1``); None if unknown."""
    text = name.strip().upper()
    if text.isdigit():
        value = int(text)
    elif match := _REALTIME.fullmatch(text if text.startswith("SIG") else f"SIG{text}"):
        base = signal.SIGRTMIN if match[1] == "MIN" else signal.SIGRTMAX
        value = base + (int(match[3]) if match[2] == "+" else -int(match[3] or 0))
    else:
        member = getattr(signal.Signals, text if text.startswith("SIG") else f"SIG{text}", None)
        return int(member) if isinstance(member, signal.Signals) else None
    known = signal.SIGRTMIN <= value <= signal.SIGRTMAX or value in signal.Signals._value2member_map_
    return value if known else None  # 32 and 33 are glibc's own


def canonical(signum: int) -> str:
    """The name a signal number is kept and reported by: ``SIGTERM``, ``SIGRTMIN+3``, ``SIGRTMAX-1``."""
    rtmin, rtmax = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    if rtmin < signum < rtmax:
        half = (rtmin + rtmax) // 2
        return f"SIGRTMIN+{signum - rtmin}" if signum <= half else f"SIGRTMAX-{rtmax - signum}"
    return signal.Signals(signum).name


def from_enum(value: int) -> str:
    """``ContainerConfig.stop_signal`` → its canonical name; "" for SIGNAL_RUNTIME_DEFAULT."""
    if value == pb.Signal.SIGNAL_RUNTIME_DEFAULT:
        return ""
    try:
        name = pb.Signal.Name(value).removeprefix("SIGNAL_")  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(f"config.stop_signal: unknown signal {value}") from None
    name = name.replace("PLUS", "+").replace("MINUS", "-")
    if number(name) is None:
        raise InvalidArgument(f"config.stop_signal: SIGNAL_{name} is not a signal of this node")
    return name  # as requested: SIGCLD stays SIGCLD (SIGCHLD's number)


def to_enum(name: str) -> pb.Signal.ValueType:
    """A kept stop signal's name → the CRI enum (SIGTERM's for an empty or unknown name)."""
    signum = number(name) or number(DEFAULT)
    assert signum is not None
    spelled = name.strip().upper()
    for text in (spelled if spelled.startswith("SIG") else f"SIG{spelled}", canonical(signum)):
        if number(text) != signum:
            continue
        try:
            return pb.Signal.Value("SIGNAL_" + text.replace("+", "PLUS").replace("-", "MINUS"))
        except ValueError:
            continue  # an alias the CRI does not name (SIGRTMIN+20): its canonical name next
    raise AssertionError(f"no CRI Signal for {name!r}")  # every signal of the node has one


def effective(requested: int, image_stop_signal: object) -> str:
    """The signal a container is stopped with: the requested one, else the image's STOPSIGNAL (kept as the image
    wrote it when it is no signal of this node, and then stopped with SIGTERM), else ""."""
    chosen = from_enum(requested)
    if chosen:
        return chosen
    image = str(image_stop_signal or "")
    signum = number(image) if image else None
    return canonical(signum) if signum is not None else image


def to_send(name: str) -> int:
    """A kept stop signal's name → the number to send (SIGTERM for an empty or unknown name)."""
    signum = number(name) or number(DEFAULT)
    assert signum is not None
    return signum
