"""Evaluation scores: the metrics on hand-made images with known answers, and the command on tiny takes."""

import json
import math

import numpy as np
import pytest
import torch

from animate_backend import metrics
from animate_backend.evaluate import score_frames


def square_frames(positions, size=32, side=8, background=0.5, colour=(0.9, 0.1, 0.1)):
    """Frames (F, H, W, 3) in [0, 1]: a coloured square at each (x, y) on a grey background."""
    frames = np.full((len(positions), size, size, 3), background, dtype=np.float32)
    for frame, (x, y) in zip(frames, positions):
        frame[y:y + side, x:x + side] = colour
    return frames


def test_silhouette_finds_the_figure_on_a_plain_background():
    frame = torch.from_numpy(square_frames([(4, 6)])).permute(0, 3, 1, 2)
    mask = metrics.silhouette(frame)
    assert mask.sum() == 64 and mask[0, 6:14, 4:12].all()


def test_iou_of_overlapping_squares():
    a = torch.zeros(1, 10, 10, dtype=torch.bool)
    b = torch.zeros(1, 10, 10, dtype=torch.bool)
    a[0, 0:4, 0:4] = True  # 16 pixels
    b[0, 2:6, 0:4] = True  # 16 pixels, 8 shared
    assert metrics.iou(a, b).item() == pytest.approx(8 / 24)
    assert metrics.iou(a & False, b & False).item() == 1.0  # two empty masks agree


def test_psnr_of_a_known_error():
    a = torch.zeros(1, 3, 8, 8)
    assert metrics.psnr(a + 0.1, a).item() == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert metrics.psnr(a + 0.01, a).item() == pytest.approx(40.0, abs=1e-3)


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((2, 3, 16, 16), dtype=np.float32))
    assert metrics.ssim(image, image) == pytest.approx(torch.ones(2), abs=1e-5)
    # Two flat images: only the luminance term remains, (2 ab + C1) / (a^2 + b^2 + C1). In
    # float64, so that the zero variances cancel exactly.
    a, b, c1 = 0.2, 0.4, 0.01**2
    flat = metrics.ssim(torch.full((1, 1, 16, 16), a, dtype=torch.float64),
                        torch.full((1, 1, 16, 16), b, dtype=torch.float64))
    assert flat.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-9)
    assert metrics.ssim(image, 1 - image).mean() < 0.1  # inverted structure


def test_scores_tell_a_following_figure_from_a_frozen_one():
    positions = [(2 + 3 * i, 10) for i in range(6)]
    truth = square_frames(positions)
    follows = score_frames(truth, truth)
    assert follows["iou"] == 1.0 and follows["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert follows["iou_reversed"] < 0.5 and follows["temporal_error"] == 0.0
    assert follows["psnr"] == 100.0  # identical frames: capped, not infinite
    frozen = score_frames(np.repeat(truth[:1], 6, axis=0), truth)
    assert frozen["iou"] < follows["iou"] and frozen["temporal_error"] > 0.0
    assert math.isfinite(frozen["psnr"])


def test_evaluate_command_on_tiny_takes(tmp_path, capsys):
    from animate_backend.__main__ import main

    from pose_bridge.image_io import write_png
    from pose_bridge.keypoints import Pose, PoseSequence
    from pose_bridge.openpose_json import write_sequence

    folder = tmp_path / "take_0000"
    (folder / "frames").mkdir(parents=True)
    positions = [(8 + 4 * i, 20) for i in range(3)]
    for i, frame in enumerate(square_frames(positions, size=64, side=16)):
        write_png(folder / "frames" / f"{i + 1:04d}.png", (frame * 255).round().astype(np.uint8))
    poses = []
    for x, y in positions:
        body = np.zeros((18, 3), dtype=np.float32)
        body[1] = (x + 8, y, 1.0)
        body[8] = (x + 8, y + 16, 1.0)
        poses.append(Pose(64, 64, body=body))
    write_sequence(PoseSequence(poses, fps=12.0), folder / "poses.json")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"frames": "take_0000/frames", "keypoints": "take_0000/poses.json",
                                    "name": "take_0000"}) + "\n")
    out = tmp_path / "scores.json"
    assert main(["evaluate", "tiny", "--data", str(manifest), "--out", str(out), "--floors", "--steps", "1",
                 "-q"]) == 0
    report = json.loads(out.read_text())
    assert set(report["rows"]) == {"model", "vae_ceiling", "reference_copy", "untrained"}
    assert report["takes"] == 1 and report["frames"] == 2 and report["size"] == [64, 64]
    # The reference copy is the first frame: its squares overlap the truth's partly.
    copy = report["rows"]["reference_copy"]
    assert 0.0 < copy["iou"] < 1.0
    assert "reference_copy" in capsys.readouterr().out
