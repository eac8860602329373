"""The farm's terminal output: a status line for the whole list, event lines, a summary table.

The status line reads, for example:

    shots 3/5 (1 failed) | generating 2, exporting 1 | frames 96/240 | ETA 0:04:10

On a terminal it is redrawn in place; into a file or a pipe it is printed when it changes,
at most every `plain_every_s` seconds, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from animate_backend.farm.state import ShotState


def frames_totals(states: list[ShotState]) -> tuple[int, int, bool]:
    """(frames done, frames in all, whether every shot's count is known yet).

    Shots not exported yet count as the mean of those known; failed and cancelled shots count
    as the frames they got.
    """
    known = [s.frames_total for s in states if s.frames_total]
    mean = sum(known) / len(known) if known else 0
    done = total = 0
    for state in states:
        done += state.frames_done
        if state.status in ("failed", "cancelled"):
            total += state.frames_done
        else:
            total += state.frames_total or round(mean)
    return done, total, len(known) == len([s for s in states if s.status not in ("failed", "cancelled")])


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class FrameRate:
    """Frames made per second since the first generation began, for the time left."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._frames_at_start = 0

    def eta(self, states: list[ShotState], now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        done, total, _ = frames_totals(states)
        if self._start is None:
            if any(s.status == "generating" for s in states):
                self._start, self._frames_at_start = now, done
            return None
        made, elapsed = done - self._frames_at_start, now - self._start
        if made <= 0 or elapsed <= 0:
            return None
        return max(0, total - done) * elapsed / made


def status_line(states: list[ShotState], eta_s: float | None) -> str:
    finished = [s for s in states if s.finished]
    ended = [f"{n} {status}" for status in ("failed", "cancelled") if (n := sum(s.status == status for s in states))]
    parts = [f"shots {len(finished)}/{len(states)}" + (f" ({', '.join(ended)})" if ended else "")]
    busy = [(word, sum(s.status == status for s in states))
            for status, word in (("generating", "generating"), ("exporting", "exporting"), ("queued", "queued"))]
    busy_text = ", ".join(f"{word} {n}" for word, n in busy if n)
    if busy_text:
        parts.append(busy_text)
    done, total, all_known = frames_totals(states)
    if total:  # "+": shots not exported yet are counted as the mean of the others
        parts.append(f"frames {done}/{total}{'' if all_known else '+'}")
    if eta_s is not None and len(finished) < len(states):
        parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


class ProgressDisplay:
    """on_update and on_message for run_farm, writing to a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, plain_every_s: float = 30.0, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self.enabled = enabled
        self.plain_every_s = plain_every_s
        self.rate = FrameRate()
        self._shown = ""
        self._last_plain = 0.0
        self._width = 0

    def update(self, states: list[ShotState]) -> None:
        if not self.enabled:
            return
        line = status_line(states, self.rate.eta(states))
        if self.live:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
        else:
            # The ETA changes every poll; print when the rest of the line changes, or now and then.
            key = line.split(" | ETA")[0]
            now = time.monotonic()
            if key != self._shown or now - self._last_plain >= self.plain_every_s:
                print(line, file=self.stream, flush=True)
                self._shown, self._last_plain = key, now

    def message(self, text: str) -> None:
        if self.live:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.live and self._width:
            self.stream.write("\n")
            self.stream.flush()


def summary_table(states: list[ShotState]) -> str:
    """One row per shot (status, generation attempts, frames, seconds, result or reason), then counts."""
    header = ("shot", "status", "tries", "frames", "seconds", "result")
    rows = []
    for s in states:
        frames = f"{s.frames_done}/{s.frames_total}" if s.frames_total else "-"
        seconds = f"{s.seconds:.1f}" if s.status == "done" else "-"
        status = s.status.upper() if s.status == "failed" else s.status
        rows.append((s.name, status, str(s.attempts or "-"), frames, seconds, s.detail))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
             for row in [header, *rows]]
    counts = {status: sum(s.status == status for s in states) for status in ("done", "skipped", "failed", "cancelled")}
    line = f"{len(states)} shot(s): {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
    lines.append(line + (f", {counts['cancelled']} cancelled" if counts["cancelled"] else ""))
    return "\n".join(lines)
