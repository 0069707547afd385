"""``moorage logs``: a container's CRI log file back as its stdout and stderr, as crictl logs prints it.

Each line of the file is ``<RFC3339Nano> <stdout|stderr> <P|F>[:more tags] <text>``; a ``P`` (partial) line is
the start of a long line whose rest follows on the next line of the same stream.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO

import click

from moorage.cli.client import CriClient
from moorage.cli.common import call, client_for
from moorage.cri import pb

POLL_SECONDS = 0.2
LIVE = (pb.ContainerState.CONTAINER_CREATED, pb.ContainerState.CONTAINER_RUNNING)


@dataclass(frozen=True)
class LogEntry:
    timestamp: str
    stream: str
    text: bytes
    complete: bool = True  # False: a partial line the file ends with


@dataclass
class LogParser:
    """Bytes of a CRI log file in, whole lines out (partial lines joined per stream); sans-I/O."""

    _rest: bytes = b""
    _partial: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def feed(self, data: bytes) -> list[LogEntry]:
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        out = []
        for line in lines:
            parts = line.split(b" ", 3)
            if len(parts) < 3:
                continue  # not a CRI log line
            timestamp, stream = parts[0].decode(errors="replace"), parts[1].decode(errors="replace")
            text = parts[3] if len(parts) == 4 else b""
            first, previous = self._partial.pop(stream, (timestamp, b""))
            if parts[2].split(b":")[0] == b"P":
                self._partial[stream] = (first, previous + text)
            else:
                out.append(LogEntry(first, stream, previous + text))
        return out

    def flush(self) -> list[LogEntry]:
        """The partial lines still waiting for their end, once no more will come."""
        out = [LogEntry(ts, stream, text, complete=False) for stream, (ts, text) in self._partial.items()]
        self._partial.clear()
        return out


def _emit(entries: list[LogEntry], timestamps: bool) -> None:
    for entry in entries:
        out: BinaryIO = sys.stderr.buffer if entry.stream == "stderr" else sys.stdout.buffer
        prefix = entry.timestamp.encode() + b" " if timestamps else b""
        out.write(prefix + entry.text + (b"\n" if entry.complete else b""))
    sys.stdout.buffer.flush()
    sys.stderr.buffer.flush()


def _state(client: CriClient, container_id: str) -> int:
    return int(call(partial(client.container_status, container_id)).status.state)


@click.command()
@click.argument("container_ref", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the container exits.")
@click.option("--tail", default=-1, show_default="all", help="Only the last N lines of what is there already.")
@click.option("--timestamps", "-t", is_flag=True, help="Prefix each line with its RFC 3339 timestamp.")
@click.pass_obj
def logs(obj: dict[str, Any], container_ref: str, follow: bool, tail: int, timestamps: bool) -> None:
    """Print a container's output, stdout to stdout and stderr to stderr, as crictl logs does."""
    with client_for(obj) as client:
        status = call(partial(client.container_status, container_ref)).status
        if not status.log_path:
            raise click.ClickException(f"container {status.id} has no log_path")
        parser = LogParser()
        while True:
            try:
                log = open(status.log_path, "rb")  # noqa: SIM115 - held across the follow loop below
                break
            except FileNotFoundError as exc:
                if not follow or _state(client, status.id) not in LIVE:
                    raise click.ClickException(f"container {status.id} has no log file {status.log_path}") from exc
                time.sleep(POLL_SECONDS)
            except OSError as exc:
                raise click.ClickException(f"{status.log_path}: {exc}") from exc
        with log:
            entries = parser.feed(log.read())
            _emit(entries[-tail:] if tail > 0 else [] if tail == 0 else entries, timestamps)
            while follow:
                chunk = log.read()
                if chunk:
                    _emit(parser.feed(chunk), timestamps)
                    continue
                if _state(client, status.id) not in LIVE:
                    _emit(parser.feed(log.read()), timestamps)
                    break
                time.sleep(POLL_SECONDS)
            _emit(parser.flush(), timestamps)
