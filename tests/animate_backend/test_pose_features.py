"""Pose Guider features through a call: kept up to a memory budget, computed again past it."""

from __future__ import annotations

import numpy as np
import torch

from animate_backend.pose_features import POSE_GUIDER_CHUNK
from animate_backend.pose_features import PoseFeatures, SkeletonImages


def fake_guider(calls: list[int]):
    """Features whose values say which frame they come from: (1, 2, n, 1, 1), frame value / 255."""

    def compute(skeletons: np.ndarray) -> torch.Tensor:
        calls.append(len(skeletons))
        values = torch.from_numpy(skeletons[:, 0, 0, 0].astype(np.float32))
        return torch.stack([values, -values])[None, :, :, None, None]

    return compute


def numbered_frames(count: int) -> SkeletonImages:
    frames = np.zeros((count, 2, 2, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(count)
    return SkeletonImages(frames, 2, 2)


def test_frames_within_the_budget_are_computed_once():
    calls: list[int] = []
    features = PoseFeatures(fake_guider(calls), numbered_frames(10), bytes_per_frame=8, chunk=3, budget_bytes=80)
    assert features.kept_frames == 10
    first = features.window([0, 1, 2, 3, 4], torch.device("cpu"))
    again = features.window([3, 4, 5, 6], torch.device("cpu"))
    assert first.shape == (1, 2, 5, 1, 1)
    assert first[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert again[0, 1, :, 0, 0].tolist() == [-3, -4, -5, -6]
    assert features.computed_frames == 7 and max(calls) <= 3


def test_frames_past_the_budget_are_computed_each_time_they_are_needed():
    calls: list[int] = []
    features = PoseFeatures(fake_guider(calls), numbered_frames(10), bytes_per_frame=8, chunk=4, budget_bytes=8 * 4)
    assert features.kept_frames == 4
    for _ in range(3):  # three steps over the same two windows
        assert features.window([0, 1, 2, 3, 4, 5], torch.device("cpu"))[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
        assert features.window([4, 5, 6, 7, 8, 9], torch.device("cpu"))[0, 0, :, 0, 0].tolist() == [4, 5, 6, 7, 8, 9]
    # frames 0-3 once; frames 4-9 every time a window holds them.
    assert features.computed_frames == 4 + 3 * (2 + 6)


def test_a_zero_budget_keeps_nothing():
    features = PoseFeatures(fake_guider([]), numbered_frames(3), bytes_per_frame=8, chunk=2, budget_bytes=0)
    features.window([0, 1, 2], torch.device("cpu"))
    features.window([0, 1, 2], torch.device("cpu"))
    assert features.kept_frames == 0 and features.computed_frames == 6


def test_the_video_is_the_same_with_a_small_budget(tiny_pipe, reference_image, skeletons):
    poses = skeletons(12)
    kwargs = dict(height=64, width=64, num_inference_steps=2, context_frames=8, context_overlap=4,
                  output_type="latent", guidance_scale=3.5)
    whole = tiny_pipe(reference_image, poses, generator=torch.Generator().manual_seed(0), **kwargs).frames

    posed_frames: list[int] = []
    hook = tiny_pipe.pose_guider.register_forward_hook(lambda module, inputs, output: posed_frames.append(len(inputs[0])))
    channels = tiny_pipe.pose_guider.config.conditioning_embedding_channels
    tiny_pipe.pose_feature_budget_bytes = 3 * channels * 8 * 8 * 4  # three frames of features, float32
    try:
        partial = tiny_pipe(reference_image, poses, generator=torch.Generator().manual_seed(0), **kwargs).frames
    finally:
        hook.remove()
        del tiny_pipe.pose_feature_budget_bytes  # back to the class default
    # float32: the Pose Guider sees frames in other chunks, so only rounding may differ.
    assert (partial - whole).abs().max().item() < 1e-5
    assert max(posed_frames) <= POSE_GUIDER_CHUNK
    # windows 0-7 and 4-11, two steps: frames 0-2 once, the other 9 frames each time a window holds them.
    windows_holding = {frame: (frame < 8) + (frame >= 4) for frame in range(12)}
    assert sum(posed_frames) == 3 + 2 * sum(windows_holding[frame] for frame in range(3, 12))


def test_skeleton_images_are_made_frame_by_frame_as_asked():
    from pose_bridge.keypoints import Pose, PoseSequence

    from animate_backend.pose_features import draw_skeletons

    frames = []
    for i in range(4):
        pose = Pose(128, 256)
        pose.body[1] = (64, 60 + 10 * i, 1.0)
        pose.body[2] = (40, 62, 1.0)
        frames.append(pose)
    sequence = PoseSequence(frames, fps=24)
    lazy = SkeletonImages(sequence, 64, 64)
    every = draw_skeletons(sequence, 64, 64)
    assert len(lazy) == 4 and every.shape == (4, 64, 64, 3)
    assert np.array_equal(lazy.frames([3, 1]), every[[3, 1]])
    images = SkeletonImages(list(every[:, :32]), 64, 64)  # 64x32 images, letterboxed into 64x64
    assert images.frames([0]).shape == (1, 64, 64, 3)


def test_a_bad_skeleton_image_stops_the_call_before_any_work():
    import pytest

    from animate_backend.errors import InputError

    good = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="skeleton image 2"):
        SkeletonImages([good, good, np.zeros((8, 8), np.float32)], 8, 8)
    with pytest.raises(InputError, match="at least one frame"):
        SkeletonImages([], 8, 8)
