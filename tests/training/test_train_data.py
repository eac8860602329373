"""The training dataset: crops, skeletons at the training size, frame choice, bad data."""

import json
import logging

import numpy as np
import pytest
import torch

from animate_backend.errors import InputError
from animate_backend.train.data import AnimateAnyoneDataset
from pose_bridge.drawing import draw_pose, stroke_scale_for
from pose_bridge.image_io import write_png
from pose_bridge.keypoints import Pose, PoseSequence
from pose_bridge.openpose_json import write_sequence

from training_clips import make_clip, write_json_manifest

SOURCE_W, SOURCE_H = 120, 90


def marker_pose(i: int) -> Pose:
    """A pose whose neck moves right and down with the frame index."""
    body = np.zeros((18, 3), dtype=np.float32)
    neck = (20.0 + 6.0 * i, 20.0 + 3.0 * i)
    body[1] = (*neck, 1.0)
    body[2] = (neck[0] - 10, neck[1], 1.0)
    body[5] = (neck[0] + 10, neck[1], 1.0)
    body[8] = (neck[0] - 6, neck[1] + 30, 1.0)
    body[11] = (neck[0] + 6, neck[1] + 30, 1.0)
    return Pose(SOURCE_W, SOURCE_H, body=body)


def marker_frame(pose: Pose) -> np.ndarray:
    """Black frame with a 4x4 white square centred on the neck keypoint."""
    frame = np.zeros((SOURCE_H, SOURCE_W, 3), dtype=np.uint8)
    x, y = pose.body[1, :2]
    frame[int(y) - 2:int(y) + 2, int(x) - 2:int(x) + 2] = 255
    return frame


@pytest.fixture(scope="module")
def marker_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("markers")
    poses = [marker_pose(i) for i in range(12)]
    (root / "frames").mkdir()
    for i, pose in enumerate(poses):
        write_png(root / "frames" / f"{i:04d}.png", marker_frame(pose))
    write_sequence(PoseSequence(poses, fps=12.0), root / "poses.json")
    return write_json_manifest(root / "manifest.json", [{"frames": "frames", "keypoints": "poses.json"}])


def brightness_centre(image: torch.Tensor) -> np.ndarray:
    """(x, y) centroid of the bright pixels of a (3, H, W) image in [-1, 1]."""
    gray = ((image.mean(0) + 1) / 2).numpy()
    weights = np.clip(gray - 0.2, 0, None)
    ys, xs = np.mgrid[: gray.shape[0], : gray.shape[1]]
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


def expected_position(point, box, size) -> np.ndarray:
    left, top, right, bottom = box
    return np.array([(point[0] - left) * size[0] / (right - left), (point[1] - top) * size[1] / (bottom - top)])


@pytest.mark.parametrize("crop", ["random", "center"])
def test_target_skeleton_and_reference_share_one_crop(marker_manifest, crop):
    size = (64, 48)
    dataset = AnimateAnyoneDataset(marker_manifest, stage=1, width=size[0], height=size[1], crop=crop,
                                   min_reference_distance=3, seed=3)
    for index, epoch in [(0, 0), (0, 1), (0, 2)]:
        dataset.set_epoch(epoch)
        plan = dataset.plan(index)
        sample = dataset.load(plan)
        left, top, right, bottom = plan.crop_box
        # Aspect kept (a uniform scale), inside the source frame.
        assert (right - left) / (bottom - top) == pytest.approx(size[0] / size[1])
        assert left >= 0 and top >= 0 and right <= SOURCE_W + 1e-4 and bottom <= SOURCE_H + 1e-4
        target_pose = marker_pose(plan.frame_indices[0])
        reference_pose = marker_pose(plan.reference_index)
        # The square marks the neck in both frames: after the crop it lies where the same
        # crop puts the keypoint.
        assert np.abs(brightness_centre(sample["pixel_values"])
                      - (expected_position(target_pose.body[1], plan.crop_box, size) - 0.5)).max() < 1.0
        assert np.abs(brightness_centre(sample["reference_pixel_values"])
                      - (expected_position(reference_pose.body[1], plan.crop_box, size) - 0.5)).max() < 1.0
        # The skeleton is drawn at the training size from the cropped keypoints, not resized.
        moved = Pose(size[0], size[1], body=target_pose.body.copy())
        for point in moved.body:
            point[:2] = expected_position(point, plan.crop_box, size)
        skeleton = draw_pose(moved, stroke_scale=stroke_scale_for(*size))
        assert sample["pose_images"].shape == (3, size[1], size[0])
        np.testing.assert_array_equal((sample["pose_images"] * 255).round().byte().permute(1, 2, 0).numpy(), skeleton)
    assert "clip_pixel_values" not in sample


def test_random_crops_differ_between_epochs_and_repeat_for_the_same_epoch(marker_manifest):
    dataset = AnimateAnyoneDataset(marker_manifest, stage=1, width=48, height=48, min_reference_distance=2, seed=0)
    boxes = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        boxes.append(dataset.plan(0).crop_box)
        assert dataset.plan(0) == dataset.plan(0)
    assert len(set(boxes)) > 1


def test_stage1_reference_is_far_enough_from_the_target(tiny_dataset):
    dataset = AnimateAnyoneDataset(tiny_dataset, stage=1, width=64, height=64, min_reference_distance=5)
    for epoch in range(20):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            plan = dataset.plan(index)
            assert abs(plan.reference_index - plan.frame_indices[0]) >= 5


def test_stage2_windows_are_strided_and_the_reference_lies_outside_them(tmp_path):
    manifest = write_json_manifest(tmp_path / "m.json", [make_clip(tmp_path / "c", frames=20, missing=(17,))])
    dataset = AnimateAnyoneDataset(manifest, stage=2, width=64, height=64, clip_frames=4, clip_stride=2,
                                   min_reference_distance=3, seed=1)
    seen_references = set()
    for epoch in range(30):
        dataset.set_epoch(epoch)
        plan = dataset.plan(0)
        frames = plan.frame_indices
        assert np.all(np.diff(frames) == 2) and len(frames) == 4
        assert 17 not in frames and plan.reference_index != 17  # frame 17 has no keypoints
        assert plan.reference_index <= frames[0] - 3 or plan.reference_index >= frames[-1] + 3
        seen_references.add(plan.reference_index)
    sample = dataset[0]
    assert sample["pixel_values"].shape == (4, 3, 64, 64)
    assert sample["pose_images"].shape == (4, 3, 64, 64)
    assert len(seen_references) > 3


def test_video_clips_and_clip_encoder_input(tmp_path):
    from transformers import CLIPImageProcessor

    manifest = write_json_manifest(tmp_path / "m.json", [make_clip(tmp_path / "v", frames=10, kind="video")])
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    dataset = AnimateAnyoneDataset(manifest, stage=2, width=64, height=48, clip_frames=3, clip_stride=2,
                                   min_reference_distance=0, clip_processor=processor)
    sample = dataset[0]
    assert sample["pixel_values"].shape == (3, 3, 48, 64)
    assert sample["clip_pixel_values"].shape == (3, 32, 32)
    assert -1.0 <= float(sample["pixel_values"].min()) and float(sample["pixel_values"].max()) <= 1.0
    # A background pixel of the decoded video matches the clip's background colour (not black).
    assert float(sample["reference_pixel_values"][2].mean()) > -0.6


def test_bad_clips_are_skipped_with_counts_in_the_log(tmp_path, caplog):
    good = make_clip(tmp_path / "good", frames=12)
    short = make_clip(tmp_path / "short", frames=5)
    no_keypoints = make_clip(tmp_path / "nokp", frames=12, missing=tuple(range(12)))
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"not a video at all")
    broken = {"video": str(broken_video), "keypoints": good["keypoints"]}
    mismatch = {"frames": short["frames"], "keypoints": good["keypoints"]}  # 5 frames, 12 poses
    missing_file = {"frames": good["frames"], "keypoints": str(tmp_path / "nope.json")}
    malformed = {"video": str(broken_video)}
    entries = [good, short, no_keypoints, broken, mismatch, missing_file, malformed]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    with caplog.at_level(logging.WARNING, logger="animate_backend.train.data"):
        dataset = AnimateAnyoneDataset(tmp_path / "m.jsonl", stage=2, width=64, height=64,
                                       clip_frames=4, clip_stride=2, min_reference_distance=0)
    assert len(dataset) == 1
    assert dataset.skipped == {
        "clips shorter than the training window": 1,
        "clips without any keypoints": 1,
        "unreadable videos or frame folders": 1,
        "clips whose frame count differs from their keypoints": 1,
        "unreadable keypoint files": 1,
        "malformed manifest entries": 1,
    }
    assert "skipped 6 of 7 clips" in caplog.text


def test_no_usable_clip_is_a_clear_error(tmp_path):
    manifest = write_json_manifest(tmp_path / "m.json", [make_clip(tmp_path / "s", frames=3)])
    with pytest.raises(InputError, match="no usable clip"):
        AnimateAnyoneDataset(manifest, stage=1, width=64, height=64, min_reference_distance=8)


def test_a_frame_that_fails_to_load_later_is_replaced_not_fatal(tmp_path, caplog):
    first = make_clip(tmp_path / "a", frames=8)
    second = make_clip(tmp_path / "b", frames=8)
    manifest = write_json_manifest(tmp_path / "m.json", [first, second])
    dataset = AnimateAnyoneDataset(manifest, stage=2, width=32, height=32, clip_frames=8, clip_stride=1,
                                   min_reference_distance=0)
    for png in (tmp_path / "a" / "frames").glob("*.png"):
        png.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        sample = dataset[0]
    assert sample["clip_index"] == 1
    assert dataset.load_failures == 1
    assert "could not load a sample" in caplog.text


def test_manifest_command_pairs_videos_with_detected_keypoints(tmp_path, caplog):
    from animate_backend.train.__main__ import main

    videos, keypoints = tmp_path / "videos", tmp_path / "keypoints"
    make_clip(tmp_path / "work", frames=6, kind="video")
    videos.mkdir()
    keypoints.mkdir()
    (tmp_path / "work" / "clip.mp4").rename(videos / "dance.mp4")
    (tmp_path / "work" / "poses.json").rename(keypoints / "dance.poses.json")  # as pose_bridge detect names it
    (videos / "undetected.mp4").write_bytes((videos / "dance.mp4").read_bytes())
    out = tmp_path / "data" / "train.jsonl"
    out.parent.mkdir()
    with caplog.at_level(logging.WARNING):
        assert main(["manifest", str(videos), "--keypoints", str(keypoints), "--out", str(out)]) == 0
    assert "undetected.mp4" in caplog.text
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["dance"]
    dataset = AnimateAnyoneDataset(out, stage=1, width=32, height=32, min_reference_distance=2)
    assert len(dataset) == 1 and dataset[0]["pixel_values"].shape == (3, 32, 32)
