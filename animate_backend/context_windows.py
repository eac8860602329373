"""Overlapping frame windows for videos longer than the motion modules' context.

The denoising UNet sees `context_frames` frames at a time. For a longer video the frames are
covered by windows that overlap by (at least) `context_overlap` frames; each step, every
window predicts noise for its frames and the predictions are blended per frame with the
windows' weights (paper 4.1, "temporal aggregation"). Two schedules (docs/model.md, "Long videos"):

- "tapered" (the default): windows never wrap from the video's end onto its start (the last
  window is moved back to end on the last frame), and weights taper linearly across each
  overlap so neighbouring windows cross-fade instead of averaging with a seam. A weight is
  never zero: a frame that only one window covers gets that window's prediction unchanged.
- "loop": the schedule Moore-AnimateAnyone released, kept so published results can be
  reproduced and compared. Windows start every `context_frames - context_overlap` frames from
  frame 0 for as long as the start is inside the video; a window running past the end wraps
  onto the first frames (8 frames, windows of 4, overlap 2: 0-3, 2-5, 4-7, 6 7 0 1). Every
  window weighs 1, so each frame gets the plain mean of its predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from animate_backend.errors import InputError
from pose_bridge.settings import CONTEXT_SCHEDULES


@dataclass(frozen=True)
class ContextWindow:
    """Video frames in the order the motion modules see them, with one blending weight per frame."""

    frames: tuple[int, ...]
    weights: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.frames)


def window_starts(num_frames: int, context_frames: int, context_overlap: int) -> list[int]:
    """First frame of each window: stride context_frames - context_overlap, last one flush with the end."""
    if num_frames <= context_frames:
        return [0]
    stride = context_frames - context_overlap
    starts = list(range(0, num_frames - context_frames, stride))
    starts.append(num_frames - context_frames)
    return starts


def _ramp(length: int) -> list[float]:
    """Rising weights for an overlap of `length` frames: 1/(L+1) ... L/(L+1).

    The falling ramp of the window before is the mirror image, so the two sum to 1 per frame.
    """
    return [(i + 1) / (length + 1) for i in range(length)]


def check_context(
    context_frames: int,
    context_overlap: int,
    schedule: str = "tapered",
    names: tuple[str, str, str] = ("context_frames", "context_overlap", "context_schedule"),
) -> None:
    """Raise InputError unless windows can be made with these settings.

    The one check of the window settings; `names` are the settings' names where the caller's
    user gives them (the command line says --context-frames...). The pipeline adds the motion
    modules' own limit on the window length.
    """
    frames_name, overlap_name, schedule_name = names
    if context_frames < 1:
        raise InputError(f"{frames_name} must be at least 1, got {context_frames}; 24 is the usual value")
    if not 0 <= context_overlap < context_frames:
        raise InputError(
            f"{overlap_name} must be between 0 and {context_frames - 1} (less than {frames_name}), "
            f"got {context_overlap}; 4 is the usual value"
        )
    if schedule not in CONTEXT_SCHEDULES:
        raise InputError(
            f"{schedule_name} must be one of {', '.join(CONTEXT_SCHEDULES)}, got {schedule!r}; "
            "'tapered' is the default, 'loop' reproduces Moore-AnimateAnyone's windows"
        )


def context_windows(
    num_frames: int, context_frames: int, context_overlap: int, schedule: str = "tapered"
) -> list[ContextWindow]:
    """The windows covering frames 0..num_frames-1, in order, with their weights (`CONTEXT_SCHEDULES`)."""
    if num_frames < 1:
        raise InputError(f"num_frames must be at least 1, got {num_frames}")
    check_context(context_frames, context_overlap, schedule)
    if schedule == "loop":
        return loop_windows(num_frames, context_frames, context_overlap)
    return tapered_windows(num_frames, context_frames, context_overlap)


def loop_windows(num_frames: int, context_frames: int, context_overlap: int) -> list[ContextWindow]:
    """Moore-AnimateAnyone's closed-loop windows, uniform weights."""
    if num_frames <= context_frames:
        return [ContextWindow(tuple(range(num_frames)), (1.0,) * num_frames)]
    stride = context_frames - context_overlap
    return [
        ContextWindow(tuple((start + i) % num_frames for i in range(context_frames)), (1.0,) * context_frames)
        for start in range(0, num_frames, stride)
    ]


def tapered_windows(num_frames: int, context_frames: int, context_overlap: int) -> list[ContextWindow]:
    """Windows that end flush with the video, cross-fading across their overlaps."""
    starts = window_starts(num_frames, context_frames, context_overlap)
    length = min(context_frames, num_frames)
    windows = []
    for index, start in enumerate(starts):
        stop = start + length
        weights = [1.0] * length
        if index > 0:
            overlap_before = starts[index - 1] + length - start
            for i, w in enumerate(_ramp(overlap_before)):
                weights[i] = min(weights[i], w)
        if index < len(starts) - 1:
            overlap_after = stop - starts[index + 1]
            for i, w in enumerate(reversed(_ramp(overlap_after))):
                weights[length - overlap_after + i] = min(weights[length - overlap_after + i], w)
        windows.append(ContextWindow(tuple(range(start, stop)), tuple(weights)))
    return windows


def coverage(windows: list[ContextWindow], num_frames: int) -> torch.Tensor:
    """Sum of the window weights per frame (float32, shape (num_frames,))."""
    total = torch.zeros(num_frames, dtype=torch.float32)
    for window in windows:
        total.index_add_(0, torch.tensor(window.frames), torch.tensor(window.weights, dtype=torch.float32))
    return total
