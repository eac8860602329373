"""Keypoint containers: one person's pose in one frame, and a sequence of them.

The layout is OpenPose's: 18 COCO body points, 21 points per hand, 68 face points.
Every point is (x, y, confidence) in pixels of the pose's canvas; confidence 0 means
the point is missing. Arrays are float32 so that JSON round trips are exact for the
values people store (pixel coordinates with a few decimals).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pose_bridge.errors import PoseDataError

BODY_POINTS = 18
HAND_POINTS = 21
FACE_POINTS = 68

# OpenPose COCO-18 body order. "Right" is the subject's right (Blender's ".R").
BODY_NAMES = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
BODY_INDEX = {name: i for i, name in enumerate(BODY_NAMES)}

# Hand order: 0 wrist, then four points per finger from the palm outwards.
HAND_NAMES = (
    "wrist",
    "thumb_1", "thumb_2", "thumb_3", "thumb_4",
    "index_1", "index_2", "index_3", "index_4",
    "middle_1", "middle_2", "middle_3", "middle_4",
    "ring_1", "ring_2", "ring_3", "ring_4",
    "little_1", "little_2", "little_3", "little_4",
)
HAND_INDEX = {name: i for i, name in enumerate(HAND_NAMES)}

# Below this confidence a point is treated as missing when drawing (DWPose's threshold).
DRAW_CONFIDENCE = 0.3

NECK = BODY_INDEX["neck"]
RIGHT_SHOULDER = BODY_INDEX["right_shoulder"]
LEFT_SHOULDER = BODY_INDEX["left_shoulder"]


def neck_from_shoulders(body: np.ndarray) -> np.ndarray:
    """The neck as DWPose builds it: the mean of the two shoulders, (x, y, confidence).

    Every skeleton the released weights were trained on got its neck this way, so poses
    from a rig and poses from detection both use this one rule (docs/skeleton.md). The
    neck is present only when both shoulders are (confidence at least DRAW_CONFIDENCE);
    its confidence is then the smaller of the two, else it is (0, 0, 0).
    body: an (18, 3) array in BODY_NAMES order.
    """
    right, left = np.asarray(body[RIGHT_SHOULDER], dtype=np.float64), np.asarray(body[LEFT_SHOULDER], dtype=np.float64)
    confidence = min(right[2], left[2])
    if confidence < DRAW_CONFIDENCE:
        return np.zeros(3, dtype=np.float32)
    x, y = (right[:2] + left[:2]) / 2.0
    return np.array([x, y, confidence], dtype=np.float32)


def set_neck_from_shoulders(body: np.ndarray) -> np.ndarray:
    """body (18, 3) with its neck replaced by neck_from_shoulders, in place; returns body."""
    body[NECK] = neck_from_shoulders(body)
    return body


# Limits that keep every pose drawable in bounded time and memory. A canvas is at most
# MAX_CANVAS_SIDE pixels a side (a 16384 x 16384 skeleton image is already 800 MB); a present
# point may lie off the canvas (a hand out of frame) but not more than MAX_OFF_CANVAS canvas
# sizes away from it: further than that it is a broken file, not a pose.
MAX_CANVAS_SIDE = 16384
MAX_OFF_CANVAS = 10


def check_canvas_size(width: float, height: float) -> None:
    """Raise PoseDataError unless width x height is a usable canvas."""
    if not (0 < width <= MAX_CANVAS_SIDE and 0 < height <= MAX_CANVAS_SIDE):
        raise PoseDataError(
            f"canvas size must be positive and at most {MAX_CANVAS_SIDE} pixels a side, got {width}x{height}"
        )


def far_points(points: np.ndarray, width: int, height: int) -> list[int]:
    """Indices of present points (confidence > 0) more than MAX_OFF_CANVAS canvases off the canvas."""
    present = points[:, 2] > 0
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    far = (np.abs(x - width / 2) > (MAX_OFF_CANVAS + 0.5) * width) | (
        np.abs(y - height / 2) > (MAX_OFF_CANVAS + 0.5) * height
    )
    return np.nonzero(present & far)[0].tolist()


def _empty(n: int) -> np.ndarray:
    return np.zeros((n, 3), dtype=np.float32)


def _check_points(name: str, points: np.ndarray, count: int) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    if points.shape != (count, 3):
        raise PoseDataError(
            f"{name} must have {count} points of (x, y, confidence), got an array of shape {points.shape}"
        )
    if not np.isfinite(points).all():
        bad = np.unique(np.nonzero(~np.isfinite(points))[0]).tolist()
        raise PoseDataError(f"{name} has NaN or infinite values at points {bad}; fix or drop those points")
    return points


@dataclass
class Pose:
    """One person in one frame, in pixels of a canvas of canvas_width x canvas_height."""

    canvas_width: int
    canvas_height: int
    body: np.ndarray = field(default_factory=lambda: _empty(BODY_POINTS))
    left_hand: np.ndarray = field(default_factory=lambda: _empty(HAND_POINTS))
    right_hand: np.ndarray = field(default_factory=lambda: _empty(HAND_POINTS))
    face: np.ndarray = field(default_factory=lambda: _empty(FACE_POINTS))

    def __post_init__(self) -> None:
        check_canvas_size(self.canvas_width, self.canvas_height)
        self.canvas_width = int(self.canvas_width)
        self.canvas_height = int(self.canvas_height)
        self.body = _check_points("body", self.body, BODY_POINTS)
        self.left_hand = _check_points("left hand", self.left_hand, HAND_POINTS)
        self.right_hand = _check_points("right hand", self.right_hand, HAND_POINTS)
        self.face = _check_points("face", self.face, FACE_POINTS)
        self.check_extent()

    def check_extent(self) -> None:
        """Raise PoseDataError for a canvas or a present point beyond the limits above."""
        check_canvas_size(self.canvas_width, self.canvas_height)
        for name, points in self.parts().items():
            far = far_points(points, self.canvas_width, self.canvas_height)
            if far:
                raise PoseDataError(
                    f"{name.replace('_', ' ')} points {far} lie more than {MAX_OFF_CANVAS} canvas sizes "
                    f"({self.canvas_width}x{self.canvas_height}) off the canvas, e.g. at "
                    f"{tuple(float(v) for v in points[far[0], :2])}; fix or drop those points"
                )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the canvas."""
        return self.canvas_width, self.canvas_height

    def copy(self) -> Pose:
        return Pose(
            self.canvas_width, self.canvas_height,
            self.body.copy(), self.left_hand.copy(), self.right_hand.copy(), self.face.copy(),
        )

    def parts(self) -> dict[str, np.ndarray]:
        """The four point arrays by name, in a fixed order."""
        return {"body": self.body, "left_hand": self.left_hand, "right_hand": self.right_hand, "face": self.face}

    def resized(self, width: int, height: int) -> Pose:
        """The same pose on a canvas of another size: coordinates scale per axis, confidences stay."""
        sx = width / self.canvas_width
        sy = height / self.canvas_height
        out = self.copy()
        out.canvas_width, out.canvas_height = int(width), int(height)
        for points in out.parts().values():
            present = points[:, 2] > 0  # missing points stay at (0, 0, 0)
            points[present, 0] *= sx
            points[present, 1] *= sy
        return out

    def fitted(self, width: int, height: int) -> Pose:
        """The pose on a canvas of another size, scaled uniformly and centred (aspect kept).

        This is the mapping of a centre-crop-free "contain" resize: the whole source canvas
        fits inside the target, the leftover is padding. Used when poses and the model's
        resolution differ in aspect, so that bodies are never stretched.
        """
        scale = min(width / self.canvas_width, height / self.canvas_height)
        ox = (width - self.canvas_width * scale) / 2.0
        oy = (height - self.canvas_height * scale) / 2.0
        out = self.copy()
        out.canvas_width, out.canvas_height = int(width), int(height)
        for points in out.parts().values():
            present = points[:, 2] > 0  # missing points stay at (0, 0, 0)
            points[present, 0] = points[present, 0] * scale + ox
            points[present, 1] = points[present, 1] * scale + oy
        return out


@dataclass
class PoseSequence:
    """The poses of one person over consecutive frames, all on one canvas."""

    frames: list[Pose]
    fps: float = 24.0

    def __post_init__(self) -> None:
        if not self.frames:
            raise PoseDataError("a pose sequence needs at least one frame, got none")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise PoseDataError(f"fps must be a positive number, got {self.fps}")
        size = self.frames[0].size
        for i, pose in enumerate(self.frames):
            if pose.size != size:
                raise PoseDataError(
                    f"frame {i} has canvas {pose.size[0]}x{pose.size[1]} but frame 0 has "
                    f"{size[0]}x{size[1]}; all frames of a sequence share one canvas"
                )

    @property
    def canvas_width(self) -> int:
        return self.frames[0].canvas_width

    @property
    def canvas_height(self) -> int:
        return self.frames[0].canvas_height

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Pose:
        return self.frames[index]

    def __iter__(self):
        return iter(self.frames)

    def resized(self, width: int, height: int) -> PoseSequence:
        return PoseSequence([p.resized(width, height) for p in self.frames], self.fps)

    def fitted(self, width: int, height: int) -> PoseSequence:
        return PoseSequence([p.fitted(width, height) for p in self.frames], self.fps)
