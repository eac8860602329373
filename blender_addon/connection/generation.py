"""Generate, as a small controller the modal operator drives: start, poll, cancel, finish.

Modal operators with timers need an event loop; tests and scripts have none. Keeping the
work here, in plain methods, lets the Generate operator call them from its timer and
tests call them directly:

    controller = GenerateController(scene, options, job_dir, runner, import_mode="PLANE")
    controller.start()                 # checks the scene, starts the backend; returns at once
    while not controller.finished:
        controller.poll()              # writes the job a few frames at a time (main thread), then
                                       # sends it and drains events: progress, frames, done / ...
    controller.finish()                # imports the result (main thread); returns what it made

Writing the job evaluates every frame of the range, which for a long shot of a heavy rig
takes a while: it is done in small steps from poll() (job_export.JobExport), so that
Blender stays responsive, shows how far it is, and Cancel works before the backend has
the job.

The runner is a connection.client.BackendClient (a local server process) or an
inprocess.InProcessRunner; both give protocol events.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pose_bridge.backend_protocol import denoising_units
from pose_bridge.errors import PoseBridgeError
from pose_bridge.job import JobPaths

from ..errors import AddonError

log = logging.getLogger(__name__)

STAGE_LABELS = {
    "exporting": "Writing the job",
    "starting": "Starting the backend",
    "loading": "Loading the model",
    "preparing": "Preparing",
    "reference": "Reading the reference",
    "denoising": "Denoising",
    "decoding": "Decoding frames",
    "encoding": "Writing the video",
    "done": "Done",
}


@dataclass
class Progress:
    """The latest progress event, in a form the panel and status bar can show."""

    stage: str = "starting"
    step: int | None = None
    steps: int | None = None
    window: int | None = None
    windows: int | None = None
    frames_done: int = 0
    frames_total: int | None = None
    eta_s: float | None = None
    message: str = ""

    def update(self, event: dict[str, Any]) -> None:
        self.stage = event.get("stage") or self.stage
        for key in ("step", "steps", "window", "windows", "frames_total", "eta_s"):
            setattr(self, key, event.get(key))
        if event.get("frames_done") is not None:
            self.frames_done = int(event["frames_done"])
        self.message = event.get("message") or ""

    def headline(self) -> str:
        text = STAGE_LABELS.get(self.stage, self.stage.title())
        if self.stage == "denoising" and self.steps:
            text += f" step {self.step or 0}/{self.steps}"
            if self.windows and self.windows > 1:
                text += f", window {self.window or 0}/{self.windows}"
        return text

    def detail(self) -> str:
        parts = []
        if self.frames_total:
            parts.append(f"frames {self.frames_done}/{self.frames_total}")
        if self.eta_s is not None:
            parts.append(f"about {_duration(self.eta_s)} left")
        return ", ".join(parts) or self.message or "..."

    def factor(self) -> float:
        """0..1 for a progress bar: denoising is most of the work, decoding the rest.

        While the job is written the bar shows the projected frames (then starts again).
        """
        if self.stage == "exporting" and self.frames_total:
            return min(1.0, self.frames_done / self.frames_total)
        if self.stage == "denoising" and self.steps:
            done, total = denoising_units(self.step, self.steps, self.window, self.windows)
            return 0.9 * done / total
        if self.stage in ("decoding", "encoding", "done") and self.frames_total:
            return 0.9 + 0.1 * min(1.0, self.frames_done / self.frames_total)
        return 0.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# Seconds of job writing per poll(): short enough that Blender redraws and takes clicks
# between steps of the operator's 0.1 s timer, long enough that few frames wait a tick.
EXPORT_BUDGET_S = 0.05


class GenerateController:
    """One Generate run. States: new, exporting, running, cancelling, done, cancelled, failed.

    export_budget_s: seconds of job writing per poll() (0: one frame per poll).
    """

    def __init__(
        self, scene, options, job_dir: str | Path, runner, import_mode: str = "PLANE", camera=None,
        export_budget_s: float = EXPORT_BUDGET_S,
    ) -> None:
        self.scene = scene
        self.options = options
        self.job_dir = Path(job_dir)
        self.runner = runner
        self.import_mode = import_mode
        self.camera = camera
        self.job_id = f"job-{uuid.uuid4().hex[:8]}"
        self.state = "new"
        self.progress = Progress()
        self.message = ""
        self.error_kind: str | None = None
        self.result: dict[str, Any] | None = None
        self.frames_done = 0
        self.paths: JobPaths | None = None  # set once the job folder is written
        self.export = None  # the job_export.JobExport while the job is being written
        self.export_budget_s = export_budget_s
        self.imported = None
        self.started_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "failed")

    def start(self) -> None:
        """Check the scene and start the backend; returns at once, the job is written by poll().

        Raises AddonError for a scene or a setup that cannot work (no armature, unmapped
        body bones, no backend...), with nothing written and no job sent.
        """
        from ..export.job_export import JobExport

        if self.state != "new":
            raise AddonError("this Generate run has already been started")
        self.started_at = time.monotonic()
        self.export = JobExport(self.scene, self.options, self.job_dir)
        # The backend starts (a process, a torch import) while the job is written; it is
        # given the job only when the job is complete.
        self.runner.start()
        done, total = self.export.progress
        self.progress = Progress(stage="exporting", frames_done=done, frames_total=total)
        self.state = "exporting"

    def poll(self) -> str:
        """Write some more of the job, or take in the events that arrived; returns the state.

        While exporting, a poll takes about export_budget_s (at least one frame); otherwise
        it never blocks.
        """
        if self.finished or self.state == "new":
            return self.state
        if self.state == "exporting":
            self._export_step()
            return self.state
        for event in self.runner.poll_events():
            self._on_event(event)
            if self.finished:
                break
        return self.state

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until finished (for scripts and tests); cancels and fails when a timeout runs out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() not in ("done", "cancelled", "failed"):
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                self._fail("internal", f"Generate did not finish within {timeout:.0f} s")
                break
            if self.state != "exporting":  # writing the job is work, not waiting
                time.sleep(interval)
        return self.state

    def cancel(self) -> None:
        """Stop the run. While the job is being written: stop writing, send nothing (an earlier
        job folder at job_dir stays as it was). Afterwards: ask the backend to stop; frames
        finished so far stay in the job folder."""
        if self.state == "exporting":
            self.export.cancel()
            self.export = None
            self.state = "cancelled"
            self.progress.message = "cancelled"
            self.message = "Cancelled while writing the job; nothing was generated"
        elif self.state == "running":
            self.runner.cancel(self.job_id)
            self.state = "cancelling"
            self.progress.message = "cancelling"

    def finish(self):
        """Import the result on the main thread; returns the object/strip/node (None if nothing)."""
        from ..results.importing import import_result

        if not self.finished:
            raise AddonError("Generate has not finished yet")
        if self.imported is not None:
            return self.imported
        if self.state == "failed" or self.import_mode == "NONE":
            return None
        if self.state == "cancelled" and self.frames_done == 0:
            return None
        self.imported = import_result(self.scene, self.paths.root, self.import_mode, camera=self.camera)
        return self.imported

    # ------------------------------------------------------------ exporting

    def _export_step(self) -> None:
        try:
            finished = self.export.step(budget_s=self.export_budget_s)
        except (AddonError, PoseBridgeError) as exc:
            self.export = None
            self._fail("export", str(exc))
            return
        except Exception as exc:  # a bug: fail the run, or the panel would show it exporting forever
            log.exception("writing the job failed")
            self.export = None
            self._fail("export", f"writing the job failed: {type(exc).__name__}: {exc}")
            return
        done, total = self.export.progress
        self.progress.frames_done, self.progress.frames_total = done, total
        if not finished:
            return
        self.paths = self.export.paths
        self.export = None
        self.progress = Progress(stage="starting")
        self.runner.run(self.paths.root, self.job_id)
        self.state = "running"

    # ------------------------------------------------------------ events

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        job_id = event.get("id")
        if job_id is not None and job_id != self.job_id:
            return  # an event of another run (a late one from a cancelled job)
        if kind == "progress":
            self.progress.update(event)
        elif kind == "frame":
            self.frames_done = max(self.frames_done, int(event.get("index", -1)) + 1)
            self.progress.frames_done = max(self.progress.frames_done, self.frames_done)
        elif kind == "done":
            self.result = event.get("result") or {}
            self.frames_done = int(self.result.get("frames", self.frames_done))
            self.state = "done"
            seconds = time.monotonic() - (self.started_at or time.monotonic())
            self.message = f"Generated {self.frames_done} frames in {_duration(seconds)}"
            if self.result.get("untrained"):
                self.message += " with the UNTRAINED tiny model (noise, not a character)"
        elif kind == "cancelled":
            self.frames_done = int(event.get("frames_done") or self._count_frames())
            self.state = "cancelled"
            self.message = f"Cancelled; {self.frames_done} finished frames kept in {self.paths.frames}"
        elif kind == "error":
            self._fail(event.get("kind") or "internal", event.get("message") or "the backend failed")

    def _fail(self, kind: str, message: str) -> None:
        self.state = "failed"
        self.error_kind = kind
        self.message = message
        self.frames_done = self._count_frames()

    def _count_frames(self) -> int:
        return 0 if self.paths is None else len(self.paths.frame_files())


# The run the panel shows; one at a time.
ACTIVE: GenerateController | None = None


def new_job_dir(output_dir: str | Path, scene_name: str) -> Path:
    """output_dir/<scene>_<date-time>[_n]: a new folder name for each run, never an old one reused."""
    import re

    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", scene_name).strip("_") or "scene"
    base = Path(output_dir) / f"{safe}_{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    return candidate
