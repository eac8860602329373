"""The pieces every front end shares: how a failed job becomes a protocol event, how denoising
progress is counted, the one check of the window settings, and the scheduler choices."""

from __future__ import annotations

import pytest
import torch

from animate_backend.context_windows import check_context
from animate_backend.errors import CancelledError, InputError, OutOfMemoryError, WeightsError
from animate_backend.events import ProgressTracker, job_failure_event
from animate_backend.schedulers import SCHEDULER_FACTORIES, make_scheduler
from pose_bridge.settings import SCHEDULERS
from pose_bridge.backend_protocol import ERROR_KINDS, denoising_units
from pose_bridge.errors import JobError
from pose_bridge.job import JobPaths


def test_every_way_a_job_ends_without_a_result_is_one_protocol_event(tmp_path):
    paths = JobPaths(tmp_path / "job")
    paths.frames.mkdir(parents=True)
    for i in range(2):
        paths.frame(i).write_bytes(b"png")
    (paths.frames / "notes.txt").write_text("not a frame")

    assert job_failure_event(CancelledError("stop"), paths.root) == {"type": "cancelled", "frames_done": 2}
    assert job_failure_event(CancelledError("stop"), tmp_path / "no_such_job") == {"type": "cancelled", "frames_done": 0}
    cases = [
        (WeightsError("no weights in DIR"), "missing_weights", "no weights in DIR"),
        (InputError("bad size"), "bad_job", "bad size"),
        (OutOfMemoryError("too big"), "out_of_memory", "too big"),
        (JobError("job.json is missing"), "bad_job", "job.json is missing"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory",
         "smaller context window"),
        (RuntimeError("MPS backend out of memory"), "out_of_memory", "smaller context window"),
        (ZeroDivisionError("float division by zero"), "internal", "ZeroDivisionError: float division by zero"),
    ]
    for exc, kind, says in cases:
        event = job_failure_event(exc, paths.root)
        assert event["type"] == "error" and event["kind"] == kind and kind in ERROR_KINDS
        assert says in event["message"], event["message"]


def test_denoising_progress_counts_windows_of_steps():
    # step 2 of 3 with 4 windows, its third window just finished: 4 + 3 of 12 units.
    assert denoising_units(2, 3, 3, 4) == (7, 12)
    assert denoising_units(3, 3, 4, 4) == (12, 12)
    assert denoising_units(1, 20, None, None) == (1, 20), "one window when the count is not known"
    assert denoising_units(None, None, None, None) == (0, 0)
    assert denoising_units(5, 3, 4, 4) == (12, 12), "never more than all"


def test_the_tracker_estimates_time_left_from_the_same_count(monkeypatch):
    events: list[dict] = []
    clock = iter([100.0, 110.0])  # the denoising clock starts at 100; 7 units are done at 110
    monkeypatch.setattr("animate_backend.events.time.monotonic", lambda: next(clock))
    tracker = ProgressTracker(events.append, frames_total=8)
    tracker.on_pipeline_progress({"stage": "reference", "frames_total": 8})
    tracker.on_pipeline_progress({"stage": "denoise", "step": 2, "steps": 3, "window": 3, "windows": 4,
                                  "frames_done": 0, "frames_total": 8})
    assert events[-1]["stage"] == "denoising"
    assert events[-1]["eta_s"] == pytest.approx(5 * 10 / 7, abs=0.01)


def test_window_settings_are_checked_once_under_the_callers_names():
    check_context(24, 4, "tapered")
    with pytest.raises(InputError, match="context_overlap must be between 0 and 7"):
        check_context(8, 8)
    with pytest.raises(InputError, match="--context-frames must be at least 1"):
        check_context(0, 0, names=("--context-frames", "--context-overlap", "--context-schedule"))
    with pytest.raises(ValueError, match="context_schedule must be one of tapered, loop"):
        check_context(8, 2, "uniform")


def test_only_real_schedulers_are_offered():
    from animate_backend.pipeline import default_scheduler

    model_own = default_scheduler()
    assert make_scheduler("ddim", model_own) is model_own
    for name in SCHEDULER_FACTORIES:
        built = make_scheduler(name, model_own)
        assert built.config.prediction_type == "v_prediction", f"{name} keeps the model's noise schedule"
    with pytest.raises(InputError, match="unknown scheduler 'lcm'; use one of ddim, dpmsolver\\+\\+, euler"):
        make_scheduler("lcm", model_own)
    # What the settings offer (command lines, the add-on) is exactly what the backend builds.
    assert set(SCHEDULERS) == set(SCHEDULER_FACTORIES)
