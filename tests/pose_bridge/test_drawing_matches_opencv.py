"""Pixel-for-pixel comparison with OpenCV, run only where cv2 is installed (it is not a dependency).

The reference below draws as DWPose's draw_bodypose / draw_handpose / draw_facepose do, with
cv2 itself; pose_bridge.drawing must give the same image without cv2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from pose_bridge.drawing import BODY_COLORS, HAND_EDGE_COLORS, HAND_EDGES, LIMBS, draw_pose  # noqa: E402
from pose_bridge.keypoints import Pose  # noqa: E402


def opencv_drawing(pose: Pose) -> np.ndarray:
    canvas = np.zeros((pose.canvas_height, pose.canvas_width, 3), np.uint8)
    body = pose.body.astype(np.float64)
    for i, (a, b) in enumerate(LIMBS):
        if body[a, 2] < 0.3 or body[b, 2] < 0.3:
            continue
        xs, ys = body[[a, b], 0], body[[a, b], 1]
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), 4), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, BODY_COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(18):
        if body[i, 2] >= 0.3:
            cv2.circle(canvas, (int(body[i, 0]), int(body[i, 1])), 4, BODY_COLORS[i], thickness=-1)
    for hand in (pose.left_hand, pose.right_hand):
        for i, (a, b) in enumerate(HAND_EDGES):
            if hand[a, 2] >= 0.3 and hand[b, 2] >= 0.3:
                p, q = (int(hand[a, 0]), int(hand[a, 1])), (int(hand[b, 0]), int(hand[b, 1]))
                cv2.line(canvas, p, q, HAND_EDGE_COLORS[i], thickness=2)
        for x, y, c in hand:
            if c >= 0.3:
                cv2.circle(canvas, (int(x), int(y)), 4, (0, 0, 255), thickness=-1)
    for x, y, c in pose.face:
        if c >= 0.3:
            cv2.circle(canvas, (int(x), int(y)), 3, (255, 255, 255), thickness=-1)
    return canvas


def test_random_poses_match_opencv_pixel_for_pixel():
    rng = np.random.default_rng(0)
    for _ in range(40):
        width, height = (int(v) for v in rng.integers(48, 200, 2))
        pose = Pose(width, height)
        for points in pose.parts().values():
            points[:, 0] = rng.uniform(-20, width + 20, len(points))
            points[:, 1] = rng.uniform(-20, height + 20, len(points))
            points[:, 2] = rng.uniform(0, 1, len(points))
        np.testing.assert_array_equal(draw_pose(pose), opencv_drawing(pose))
