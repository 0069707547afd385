"""``moorage pull``'s display: one line per layer with its state, bytes and rate, redrawn in place on a
terminal as docker pull does, or one line per layer state change when the output is a file or a pipe."""

from __future__ import annotations

import time
from typing import Any, TextIO

BAR_WIDTH = 30


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.1f}{unit}" if unit != "B" else f"{int(count)}B"
        count /= 1000
    return f"{count:.1f}GB"


class PullDisplay:
    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._lines = 0
        self._states: dict[str, str] = {}
        self._started: dict[str, tuple[float, int]] = {}

    def update(self, snapshot: dict[str, Any]) -> None:
        layers = snapshot.get("layers", [])
        if self.tty:
            self._redraw(layers)
            return
        for layer in layers:
            if self._states.get(layer["digest"]) != layer["state"]:
                self._states[layer["digest"]] = layer["state"]
                self.out.write(self._line(layer) + "\n")
        self.out.flush()

    def _redraw(self, layers: list[dict[str, Any]]) -> None:
        if self._lines:
            self.out.write(f"\x1b[{self._lines}A")
        for layer in layers:
            self.out.write("\x1b[2K" + self._line(layer) + "\n")
        self._lines = len(layers)
        self.out.flush()

    def _line(self, layer: dict[str, Any]) -> str:
        digest = str(layer["digest"]).removeprefix("sha256:")[:12]
        state, done, size = str(layer["state"]), int(layer["done"]), int(layer["size"])
        labels = {
            "waiting": "Waiting",
            "downloading": "Downloading",
            "extracting": "Extracting",
            "complete": "Pull complete",
            "exists": "Already exists",
        }
        label = labels.get(state, state.capitalize())
        if state != "downloading" or size <= 0:
            return f"{digest}: {label}" + (f" {human_bytes(size)}" if state == "complete" else "")
        now = time.monotonic()
        first_time, first_done = self._started.setdefault(digest, (now, done))
        elapsed = now - first_time
        rate = (done - first_done) / elapsed if elapsed > 0.2 else 0.0
        filled = min(BAR_WIDTH, BAR_WIDTH * done // size)
        bar = "=" * max(filled - 1, 0) + (">" if filled else "") + " " * (BAR_WIDTH - filled)
        return f"{digest}: {label} [{bar}] {human_bytes(done)}/{human_bytes(size)} {human_bytes(rate)}/s"
