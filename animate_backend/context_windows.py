"""Overlapping frame windows for videos longer than the motion modules' context.

The denoising UNet sees `context_frames` frames at a time. For a longer video the frames are
covered by windows that overlap by (at least) `context_overlap` frames; each step, every
window predicts noise for its frames and the predictions are blended per frame with the
windows' weights (paper 4.1, "temporal aggregation").

Unlike Moore-AnimateAnyone, windows never wrap from the video's end onto its start (the last
window is moved back to end on the last frame), and weights taper linearly across each overlap
so neighbouring windows cross-fade instead of averaging with a seam. A weight is never zero:
a frame that only one window covers gets that window's prediction unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ContextWindow:
    """Frames start..stop-1 of the video, with one blending weight per frame."""

    start: int
    stop: int
    weights: tuple[float, ...]

    @property
    def frames(self) -> range:
        return range(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


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


def context_windows(num_frames: int, context_frames: int, context_overlap: int) -> list[ContextWindow]:
    """The windows covering frames 0..num_frames-1, in order, each with tapered weights."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if context_frames < 1:
        raise ValueError(f"context_frames must be at least 1, got {context_frames}")
    if not 0 <= context_overlap < context_frames:
        raise ValueError(
            f"context_overlap must be at least 0 and less than context_frames ({context_frames}), got {context_overlap}"
        )
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
        windows.append(ContextWindow(start, stop, tuple(weights)))
    return windows


def coverage(windows: list[ContextWindow], num_frames: int) -> torch.Tensor:
    """Sum of the window weights per frame (float32, shape (num_frames,))."""
    total = torch.zeros(num_frames, dtype=torch.float32)
    for window in windows:
        total[window.start : window.stop] += torch.tensor(window.weights, dtype=torch.float32)
    return total
