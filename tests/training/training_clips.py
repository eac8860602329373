"""Small synthetic clips for the training tests and benchmarks: a stick figure that waves,
drawn into its frames, with its keypoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pose_bridge.drawing import draw_pose
from pose_bridge.image_io import write_png, write_video
from pose_bridge.keypoints import Pose, PoseSequence
from pose_bridge.openpose_json import write_sequence

CONFIG_DIR = Path(__file__).resolve().parents[2] / "animate_backend" / "configs"


def figure_pose(t: float, width: int, height: int) -> Pose:
    """A stick figure centred in the canvas; the arms swing with t (radians)."""
    cx, top, unit = width / 2, height * 0.15, height / 10
    body = np.zeros((18, 3), dtype=np.float32)
    points = {
        0: (cx, top), 1: (cx, top + unit),
        2: (cx - unit, top + unit), 5: (cx + unit, top + unit),
        8: (cx - 0.6 * unit, top + 4 * unit), 11: (cx + 0.6 * unit, top + 4 * unit),
        9: (cx - 0.7 * unit, top + 5.5 * unit), 12: (cx + 0.7 * unit, top + 5.5 * unit),
        10: (cx - 0.8 * unit, top + 7 * unit), 13: (cx + 0.8 * unit, top + 7 * unit),
    }
    swing = math.sin(t)
    points[3] = (cx - 2 * unit, top + (1.5 + swing) * unit)
    points[4] = (cx - 3 * unit, top + (1.5 + 2 * swing) * unit)
    points[6] = (cx + 2 * unit, top + (1.5 - swing) * unit)
    points[7] = (cx + 3 * unit, top + (1.5 - 2 * swing) * unit)
    for index, (x, y) in points.items():
        body[index] = (x, y, 1.0)
    return Pose(width, height, body=body)


def figure_frame(pose: Pose, background=(40, 60, 90)) -> np.ndarray:
    """The frame of a pose: its skeleton over a coloured background with a gradient."""
    skeleton = draw_pose(pose, stroke_scale=max(pose.canvas_width, pose.canvas_height) / 256)
    frame = np.empty_like(skeleton)
    frame[:] = background
    frame[..., 0] = np.linspace(background[0], 200, pose.canvas_width, dtype=np.float32)[None, :].astype(np.uint8)
    mask = skeleton.any(axis=2)
    frame[mask] = skeleton[mask]
    return frame


def make_clip(folder: Path, frames: int = 12, width: int = 96, height: int = 80, kind: str = "frames",
              missing: tuple[int, ...] = ()) -> dict:
    """Write a clip (PNG folder or mp4) and its keypoint file; returns its manifest entry.

    Frames listed in `missing` keep their image but get no keypoints.
    """
    folder.mkdir(parents=True, exist_ok=True)
    poses = [figure_pose(i * 0.5, width, height) for i in range(frames)]
    images = [figure_frame(p) for p in poses]
    for i in missing:
        poses[i] = Pose(width, height)
    write_sequence(PoseSequence(poses, fps=12.0), folder / "poses.json")
    if kind == "frames":
        (folder / "frames").mkdir(exist_ok=True)
        for i, image in enumerate(images):
            write_png(folder / "frames" / f"{i + 1:04d}.png", image)
        return {"frames": str(folder / "frames"), "keypoints": str(folder / "poses.json")}
    write_video(folder / "clip.mp4", iter(images), fps=12.0)
    return {"video": str(folder / "clip.mp4"), "keypoints": str(folder / "poses.json")}


def write_json_manifest(path: Path, entries: list) -> Path:
    path.write_text(json.dumps({"clips": entries}))
    return path


