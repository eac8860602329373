"""Poses shared by the pose_bridge tests (a module, not a conftest, so tests import it by name)."""

from __future__ import annotations

import numpy as np

from pose_bridge.keypoints import BODY_INDEX, Pose

# A person standing, facing the camera, on a 512x512 canvas: the subject's right is image left.
STANDING = {
    "nose": (256, 100), "neck": (256, 150),
    "right_shoulder": (206, 150), "right_elbow": (186, 220), "right_wrist": (176, 290),
    "left_shoulder": (306, 150), "left_elbow": (326, 220), "left_wrist": (336, 290),
    "right_hip": (226, 290), "right_knee": (221, 380), "right_ankle": (216, 470),
    "left_hip": (286, 290), "left_knee": (291, 380), "left_ankle": (296, 470),
    "right_eye": (246, 90), "left_eye": (266, 90), "right_ear": (236, 95), "left_ear": (276, 95),
}


def standing_body(confidence: float = 0.9) -> np.ndarray:
    body = np.zeros((18, 3), dtype=np.float32)
    for name, (x, y) in STANDING.items():
        body[BODY_INDEX[name]] = (x, y, confidence)
    return body


def hand_at(wrist: tuple[float, float], direction: float = 1.0) -> np.ndarray:
    """21 hand points fanning out below a wrist, 6 px apart along each finger."""
    hand = np.zeros((21, 3), dtype=np.float32)
    hand[0] = (*wrist, 0.8)
    for finger in range(5):
        for joint in range(4):
            x = wrist[0] + direction * (finger - 2) * 5.0
            y = wrist[1] + 8.0 + joint * 6.0
            hand[1 + finger * 4 + joint] = (x, y, 0.8)
    return hand


def face_ring(center: tuple[float, float] = (256.0, 100.0), radius: float = 30.0) -> np.ndarray:
    """68 face points on a ring (spaced > 2 px apart), all confident."""
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    face = np.zeros((68, 3), dtype=np.float32)
    face[:, 0] = center[0] + radius * np.cos(angles)
    face[:, 1] = center[1] + radius * np.sin(angles)
    face[:, 2] = 0.7
    return face


def standing_pose(with_hands: bool = True, with_face: bool = True) -> Pose:
    pose = Pose(512, 512, body=standing_body())
    if with_hands:
        pose.right_hand = hand_at(STANDING["right_wrist"], -1.0)
        pose.left_hand = hand_at(STANDING["left_wrist"], 1.0)
    if with_face:
        pose.face = face_ring()
    return pose
