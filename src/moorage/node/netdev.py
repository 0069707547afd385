"""Network interface counters of a pod's net namespace: what PodSandboxStats and the pod metrics report.

The kernel shows a namespace's interfaces in ``/proc/thread-self/net/dev`` of a thread inside it; a pinned pod
namespace has no process to look through, so the file is read from a thread that entered it
(:func:`moorage.node.netns.in_netns`). ``lo`` is left out, as the kubelet's summary API leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moorage.node.netns import in_netns

DEFAULT_INTERFACE = "eth0"  # what CNI plugins name the pod's interface, and what the kubelet treats as default


@dataclass(frozen=True)
class InterfaceCounters:
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str) -> list[InterfaceCounters]:
    """``/proc/net/dev``: two header lines, then ``name: rx bytes packets errs drop fifo frame compressed
    multicast tx bytes packets errs drop ...`` per interface; ``lo`` and malformed lines are skipped."""
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 16 or name.strip() == "lo":
            continue
        try:
            n = [int(f) for f in fields]
        except ValueError:
            continue
        out.append(InterfaceCounters(name.strip(), n[0], n[1], n[2], n[3], n[8], n[9], n[10], n[11]))
    return out


def read_counters(netns: Path) -> list[InterfaceCounters]:
    """The interfaces (but ``lo``) of the net namespace pinned on ``netns``. Raises OSError if it is gone."""
    return in_netns(netns, lambda: parse_net_dev(Path("/proc/thread-self/net/dev").read_text()))
