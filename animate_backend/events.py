"""Progress bookkeeping for a run: protocol progress events with an estimate of the time left.

The pipeline reports raw counters (stage, denoising step, window, frames decoded); this module
turns them into the `progress` events of pose_bridge.backend_protocol and adds `eta_s`, the
estimated seconds left, measured from the time the finished units of work took so far.

The estimate counts the work of the denoising stage (one unit per window per step: every unit
costs about the same) and then of the decoding stage (one unit per frame). While denoising, the
decoding that follows is not included: it is a few percent of the work for the real model
(docs/model.md, "Cost": about 4 TFLOP per frame to decode against about 80 to denoise).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pose_bridge.backend_protocol import denoising_units

EventCallback = Callable[[dict[str, Any]], None]

# The pipeline's on_progress stage names -> the protocol's (pose_bridge.backend_protocol.STAGES).
PIPELINE_STAGES = {"reference": "reference", "denoise": "denoising", "decode": "decoding"}

PROGRESS_KEYS = ("stage", "step", "steps", "window", "windows", "frames_done", "frames_total")


def progress_event(stage: str, message: str = "", **counters: Any) -> dict[str, Any]:
    """A protocol progress event (without the job id, which the server adds).

    Counters not given are null: the protocol says numbers not known yet are null.
    """
    event: dict[str, Any] = {"type": "progress", "stage": stage}
    for key in PROGRESS_KEYS[1:]:
        event[key] = counters.get(key)
    event["eta_s"] = counters.get("eta_s")
    event["message"] = message
    return event


@dataclass
class StageClock:
    """Times the units of work of one stage to estimate how long the rest will take."""

    started: float = field(default_factory=lambda: time.monotonic())

    def eta(self, units_done: int, units_total: int) -> float | None:
        """Seconds left for units_total - units_done units, or None before the first unit ends."""
        if units_done <= 0 or units_total <= 0:
            return None
        per_unit = (time.monotonic() - self.started) / units_done
        return round(max(0, units_total - units_done) * per_unit, 2)


class ProgressTracker:
    """Receives the pipeline's on_progress dicts and emits protocol progress events.

    `emit` gets each event; the job runner logs it and hands it to its own on_event.
    """

    def __init__(self, emit: EventCallback, frames_total: int) -> None:
        self.emit = emit
        self.frames_total = frames_total
        self._clocks: dict[str, StageClock] = {}

    def stage(self, stage: str, message: str = "", **counters: Any) -> None:
        """A stage without countable units (loading, preparing, encoding...)."""
        counters.setdefault("frames_total", self.frames_total)
        self.emit(progress_event(stage, message, **counters))

    def _clock(self, stage: str) -> StageClock:
        if stage not in self._clocks:
            self._clocks[stage] = StageClock()
        return self._clocks[stage]

    def restart_clock(self, stage: str) -> None:
        """Start timing a stage now (e.g. decoding begins after the latents are saved)."""
        self._clocks[stage] = StageClock()

    def on_pipeline_progress(self, info: dict[str, Any]) -> None:
        """The pipeline's on_progress callback.

        The pipeline names its stages "reference", "denoise" and "decode" and reports 0 for
        counters that do not apply; events use the protocol's stage names and null. During
        denoising, `step` and `window` (both 1-based) say which window of which step has just
        finished (pose_bridge.backend_protocol.denoising_units counts the finished units).
        """
        stage = PIPELINE_STAGES.get(str(info.get("stage")), str(info.get("stage")))
        counters = {key: info.get(key) for key in PROGRESS_KEYS[1:]}
        if stage != "denoising":
            for key in ("step", "steps", "window", "windows"):
                counters[key] = None
        if not counters["frames_total"]:
            counters["frames_total"] = self.frames_total
        eta = None
        if stage == "denoising" and counters["step"]:
            eta = self._clock(stage).eta(*denoising_units(
                counters["step"], counters["steps"], counters["window"], counters["windows"]
            ))
        elif stage == "reference":
            # Denoising follows the reference pass: time its first unit from here (this counts
            # the one-off reference encoding into the first unit, a small overestimate).
            self.restart_clock("denoising")
        self.emit(progress_event(stage, str(info.get("message", "")), eta_s=eta, **counters))

    def decoded(self, written: int, to_decode: int, done_before: int = 0, message: str = "") -> None:
        """Decoding progress: `written` of the `to_decode` frames this run decodes are finished.

        frames_done counts every finished frame of the video, including the `done_before`
        frames an earlier run left; the estimate only uses the frames decoded in this run.
        """
        eta = self._clock("decoding").eta(written, to_decode) if written else None
        self.emit(
            progress_event(
                "decoding", message, frames_done=done_before + written, frames_total=self.frames_total, eta_s=eta
            )
        )


def job_failure_event(exc: BaseException, job_dir: str | os.PathLike) -> dict[str, Any]:
    """The protocol event (without the id) for a job that ended with `exc` instead of a result.

    A cancel becomes `cancelled` with the frame files the job now holds; every other exception
    an `error` of its kind: the backend's own errors carry theirs, pose_bridge's are bad jobs,
    a device out of memory gets the one advice text, anything else is a crash to report.
    """
    from animate_backend.errors import BackendError, CancelledError, is_out_of_memory, out_of_memory_error
    from animate_backend.job_folder import count_finished_frames
    from pose_bridge.errors import PoseBridgeError

    if isinstance(exc, CancelledError):
        try:
            frames_done = count_finished_frames(job_dir)
        except OSError:
            frames_done = 0
        return {"type": "cancelled", "frames_done": frames_done}
    if isinstance(exc, BackendError):
        kind, message = exc.kind, str(exc)
    elif isinstance(exc, PoseBridgeError):
        kind, message = "bad_job", str(exc)
    elif is_out_of_memory(exc):
        kind, message = "out_of_memory", str(out_of_memory_error(exc))
    else:
        kind = "internal"
        message = (
            f"the backend crashed while running the job ({type(exc).__name__}: {exc}); the backend's "
            f"log has the details, please report them"
        )
    return {"type": "error", "kind": kind, "message": message}
