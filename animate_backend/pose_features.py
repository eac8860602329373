"""The Pose Guider's inputs and outputs through one call, within a memory budget.

`SkeletonImages` makes a video's skeleton images when they are asked for: drawn from a
PoseSequence at the output size, or letterboxed from given images. Only the frames asked for
exist at a time: a long shot's skeletons (1.2 MB a frame at 512x768, 280 MB for 240 frames,
twice that while they were stacked) no longer sit in memory for the whole call.

The Pose Guider sees one frame at a time, so a frame's features are the same in every window
and every denoising step: computing them once per call and keeping them saves the Pose
Guider's share of each step (a tenth of the time at narrow widths). Kept for every frame,
though, they grow with the video: at 512x768 with SD 1.5 widths a frame's features are
320 x 64 x 96 values, 7.5 MiB in float32, 1.8 GiB for 240 frames, which is what made a long
shot's peak memory grow with its length.

So `PoseFeatures` keeps the features of the first frames up to `budget_bytes` (kept in host
memory, so device memory holds one window's at most) and computes the rest again each time a
window needs them. At SD 1.5 widths the Pose Guider is under 1% of a denoising step's work
(3.7 against about 520 GFLOP a frame at 256x256, counted), so frames beyond the budget cost
little; short shots, and every shot at narrow widths, fit whole.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from animate_backend.errors import InputError
from animate_backend.images import letterbox, to_rgb_array

# Frames per Pose Guider call. Its first layers run at full pixel resolution (16 channels: 4 MiB
# per frame at 256x256, 25 MiB at 512x768), so a whole window at once was the largest single
# allocation of a narrow model's call; 4 frames took 50 MiB off the peak at 256x256 and cost no time.
POSE_GUIDER_CHUNK = 4

# Host memory for kept features: 34 frames at 512x768 in float32 (68 in fp16), 200 at 256x256.
DEFAULT_BUDGET_BYTES = 256 * 2**20


class SkeletonImages:
    """A video's skeleton images (height x width, uint8 RGB), made when asked for.

    `poses` is a pose_bridge PoseSequence, whose poses are fitted to the output size (aspect
    kept) and drawn there with strokes scaled to the resolution, so nothing is lost to resizing
    an image; or a sequence of skeleton images (PIL or uint8 arrays), letterboxed with black.
    Images are checked when this is made, so a bad one stops the call before any work.
    """

    def __init__(self, poses, width: int, height: int, draw_hands: bool = True, draw_face: bool = True):
        self.width, self.height = width, height
        self.draw_hands, self.draw_face = draw_hands, draw_face
        if hasattr(poses, "frames") and hasattr(poses, "fps"):  # a pose_bridge PoseSequence
            self._poses, self._images = list(poses.frames), None
        else:
            if isinstance(poses, np.ndarray) and poses.ndim == 4:
                poses = list(poses)
            if not isinstance(poses, Sequence) or isinstance(poses, (str, bytes)):
                raise InputError("poses must be a pose_bridge PoseSequence or a list of skeleton images")
            for index, image in enumerate(poses):
                to_rgb_array(image, f"skeleton image {index}")
            self._poses, self._images = None, poses
        if len(self) == 0:
            raise InputError("no poses were given: the video needs at least one frame")

    def __len__(self) -> int:
        return len(self._poses) if self._poses is not None else len(self._images)

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """The images of frames `indices`, (n, height, width, 3) uint8."""
        return np.stack([self._frame(index) for index in indices])

    def _frame(self, index: int) -> np.ndarray:
        if self._poses is not None:
            from pose_bridge.drawing import draw_pose, stroke_scale_for

            pose = self._poses[index].fitted(self.width, self.height)
            stroke = stroke_scale_for(self.width, self.height)
            return draw_pose(pose, hands=self.draw_hands, face=self.draw_face, stroke_scale=stroke)
        image = to_rgb_array(self._images[index], f"skeleton image {index}")
        return letterbox(image, self.width, self.height)


def draw_skeletons(poses, width: int, height: int, draw_hands: bool = True, draw_face: bool = True) -> np.ndarray:
    """Every skeleton image of `poses` at once, (F, height, width, 3) uint8 (see SkeletonImages)."""
    skeletons = SkeletonImages(poses, width, height, draw_hands, draw_face)
    return skeletons.frames(range(len(skeletons)))


class PoseFeatures:
    """Features (1, C, n, h, w) of any frames of one video, computed by `compute`.

    Args:
        compute: skeleton images (n, H, W, 3) uint8 -> their features (1, C, n, h, w); called with
            at most `chunk` frames at a time, so the Pose Guider's full-resolution first layers
            stay small.
        skeletons: the video's skeleton images.
        bytes_per_frame: the size of one frame's features, to apply the budget.
        chunk: frames per `compute` call.
        budget_bytes: host memory for kept features; frames past it are computed on each use.
    """

    def __init__(
        self,
        compute: Callable[[np.ndarray], torch.Tensor],
        skeletons: SkeletonImages,
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
        # One host buffer (kept_frames, C, h, w), made at the first frame: kept frames in one
        # allocation, not hundreds of small ones among the call's transient tensors, where they
        # kept the allocator from giving memory back (the peak grew 3x faster than the features).
        self._store: torch.Tensor | None = None
        self._kept: set[int] = set()
        self.computed_frames = 0  # how many frames went through `compute`, for tests and benchmarks

    def window(self, frames: list[int], device: torch.device) -> torch.Tensor:
        """Features of `frames` (in that order), (1, C, len(frames), h, w) on `device`."""
        missing = [frame for frame in frames if frame not in self._kept]
        fresh = dict(zip(missing, self._compute(missing)))
        for frame, features in fresh.items():
            if frame < self.kept_frames:
                if self._store is None:
                    self._store = torch.empty((self.kept_frames, *features.shape), dtype=features.dtype)
                self._store[frame] = features
                self._kept.add(frame)
        parts = [self._store[frame] if frame in self._kept else fresh[frame] for frame in frames]
        return torch.stack([part.to(device) for part in parts], dim=1)[None]

    def _compute(self, frames: list[int]) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for start in range(0, len(frames), self.chunk):
            part = frames[start : start + self.chunk]
            computed = self.compute(self.skeletons.frames(part))[0]  # (C, n, h, w)
            features.extend(computed.unbind(1))
            self.computed_frames += len(part)
        return features
