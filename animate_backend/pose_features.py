"""The Pose Guider features of a whole video, kept within a memory budget.

The Pose Guider sees one frame at a time, so a frame's features are the same in every window
and every denoising step: computing them once per call and keeping them saves the Pose
Guider's share of each step (a tenth of the time at narrow widths). Kept for every frame,
though, they grow with the video: at 512x768 with SD 1.5 widths a frame's features are
320 x 64 x 96 values, 7.5 MiB in float32, 1.8 GiB for 240 frames, which is what made a long
shot's peak memory grow with its length.

So `PoseFeatures` keeps the features of the first frames up to `budget_bytes` (kept in host
memory, so device memory holds one window's at most) and computes the rest again each time a
window needs them. At SD 1.5 widths the Pose Guider is about 2% of a denoising step, so frames
beyond the budget cost little; short shots, and every shot at narrow widths, fit whole.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

# Host memory for kept features: 34 frames at 512x768 in float32 (68 in fp16), 200 at 256x256.
DEFAULT_BUDGET_BYTES = 256 * 2**20


class PoseFeatures:
    """Features (1, C, n, h, w) of any frames of one video, computed by `compute`.

    Args:
        compute: skeleton images (n, H, W, 3) uint8 -> their features (1, C, n, h, w); called with
            at most `chunk` frames at a time, so the Pose Guider's full-resolution first layers
            stay small.
        skeletons: the video's skeleton images (F, H, W, 3) uint8.
        bytes_per_frame: the size of one frame's features, to apply the budget.
        chunk: frames per `compute` call.
        budget_bytes: host memory for kept features; frames past it are computed on each use.
    """

    def __init__(
        self,
        compute: Callable[[np.ndarray], torch.Tensor],
        skeletons: np.ndarray,
        bytes_per_frame: int,
        chunk: int,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ):
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self.compute = compute
        self.skeletons = skeletons
        self.chunk = chunk
        self.kept_frames = min(len(skeletons), max(0, budget_bytes) // max(1, bytes_per_frame))
        self._kept: dict[int, torch.Tensor] = {}  # frame -> (C, h, w) on the host
        self.computed_frames = 0  # how many frames went through `compute`, for tests and benchmarks

    def window(self, frames: list[int], device: torch.device) -> torch.Tensor:
        """Features of `frames` (in that order), (1, C, len(frames), h, w) on `device`."""
        missing = [frame for frame in frames if frame not in self._kept]
        fresh = dict(zip(missing, self._compute(missing)))
        for frame, features in fresh.items():
            if frame < self.kept_frames:
                # A copy: a view would keep its whole chunk's storage alive.
                self._kept[frame] = features.to("cpu", copy=True)
        parts = [self._kept[frame] if frame in self._kept else fresh[frame] for frame in frames]
        return torch.stack([part.to(device) for part in parts], dim=1)[None]

    def _compute(self, frames: list[int]) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for start in range(0, len(frames), self.chunk):
            part = frames[start : start + self.chunk]
            computed = self.compute(self.skeletons[part])[0]  # (C, n, h, w)
            features.extend(computed.unbind(1))
            self.computed_frames += len(part)
        return features
