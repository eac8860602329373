"""Skeleton drawing, checked against docs/skeleton.md (DWPose's drawing), not against itself."""

from __future__ import annotations

import numpy as np
import pytest
from pose_samples import STANDING, standing_pose

from pose_bridge.drawing import (
    BODY_COLORS,
    LIMBS,
    draw_pose,
    draw_sequence,
    ellipse_poly,
    stroke_scale_for,
)
from pose_bridge.keypoints import BODY_INDEX, Pose, PoseSequence

# The spec's limb colours after "the canvas is multiplied by 0.6" (uint8 truncation: 85 -> 51).
DIMMED = {255: 153, 170: 102, 85: 51, 0: 0}

BLACK = (0, 0, 0)


def dimmed(color):
    return tuple(DIMMED[c] for c in color)


def pixel(image, x, y):
    return tuple(int(v) for v in image[y, x])


def two_point_pose(a: str, pa, b: str, pb, size=(200, 200)) -> Pose:
    pose = Pose(*size)
    pose.body[BODY_INDEX[a]] = (*pa, 1.0)
    pose.body[BODY_INDEX[b]] = (*pb, 1.0)
    return pose


def test_output_is_rgb_uint8_at_the_canvas_size_on_black():
    image = draw_pose(Pose(48, 32))
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8
    assert not image.any()


def test_horizontal_limb_has_the_exact_ellipse_then_joint_discs():
    # Limb 1 of the spec is [2, 3]: neck -> right shoulder, colour (255, 0, 0).
    image = draw_pose(two_point_pose("neck", (100, 100), "right_shoulder", (140, 100)))
    limb = dimmed(BODY_COLORS[0])
    # Ellipse axes (length / 2, 4) = (20, 4) around (120, 100).
    assert [pixel(image, 120, y) for y in range(95, 106)] == [BLACK] + [limb] * 9 + [BLACK]
    # Along the row: neck disc (radius 4, colour 1), limb, shoulder disc (colour 2), then black.
    row = [pixel(image, x, 100) for x in range(95, 146)]
    assert row == [BLACK] + [BODY_COLORS[1]] * 9 + [limb] * 31 + [BODY_COLORS[2]] * 9 + [BLACK]


def test_vertical_limb_is_the_same_ellipse_turned():
    image = draw_pose(two_point_pose("neck", (100, 60), "nose", (100, 120)))
    limb = dimmed(BODY_COLORS[12])  # limb 13 of the spec: [2, 1] neck -> nose
    assert [pixel(image, x, 90) for x in range(95, 106)] == [BLACK] + [limb] * 9 + [BLACK]


def test_ellipse_polygon_follows_opencv_rounding():
    points = ellipse_poly((50, 50), (10, 4), 45)
    # Angle 0 of the ellipse: (50 + 10 cos 45, 50 + 10 sin 45) = (57.07, 57.07) -> (57, 57).
    assert points[0] == (57, 57)
    # 90 degrees: (50 - 4 sin 45, 50 + 4 cos 45) = (47.17, 52.83) -> (47, 53).
    assert (47, 53) in points
    # Closed (the 360 degree point repeats the first) and without consecutive duplicates.
    assert points[-1] == points[0]
    assert all(p != q for p, q in zip(points, points[1:]))


def test_every_limb_centre_has_its_dimmed_colour():
    image = draw_pose(standing_pose(), hands=False, face=False)
    body = standing_pose().body
    for i, (a, b) in enumerate(LIMBS[:13]):  # arms, legs, shoulders, hips, neck: centres apart
        cx = int((body[a, 0] + body[b, 0]) / 2)
        cy = int((body[a, 1] + body[b, 1]) / 2)
        assert pixel(image, cx, cy) == dimmed(BODY_COLORS[i]), f"limb {i}"


def test_joint_discs_have_full_colour_and_radius_4():
    image = draw_pose(standing_pose(), hands=False, face=False)
    for name, (x, y) in STANDING.items():
        color = BODY_COLORS[BODY_INDEX[name]]
        assert pixel(image, x, y) == color, name
    # Wrists: the forearm comes from above, so the disc edge is clean below and to the sides.
    for name in ("right_wrist", "left_wrist"):
        x, y = STANDING[name]
        color = BODY_COLORS[BODY_INDEX[name]]
        for dx, dy in ((3, 0), (-3, 0), (0, 3), (0, 4), (4, 0)):
            assert pixel(image, x + dx, y + dy) == color, (name, dx, dy)
        assert pixel(image, x, y + 6) == BLACK
        assert pixel(image, x + 6, y + 2) == BLACK
        assert pixel(image, x + 4, y + 4) == BLACK  # a disc, not a square


def test_points_below_confidence_03_are_skipped():
    pose = standing_pose(with_hands=False, with_face=False)
    pose.body[BODY_INDEX["right_wrist"], 2] = 0.2
    image = draw_pose(pose)
    x, y = STANDING["right_wrist"]
    assert pixel(image, x, y) == BLACK
    # The forearm (limb 4 of the spec, [4, 5]) is gone too; the upper arm stays.
    elbow, wrist = np.array(STANDING["right_elbow"]), np.array(STANDING["right_wrist"])
    mid = ((elbow + wrist) / 2).astype(int)
    assert pixel(image, *mid) == BLACK
    shoulder = np.array(STANDING["right_shoulder"])
    mid = ((shoulder + elbow) / 2).astype(int)
    assert pixel(image, *mid) == dimmed(BODY_COLORS[2])


def test_hands_are_blue_joints_on_hsv_edges_and_can_be_switched_off():
    pose = Pose(100, 100)
    pose.left_hand[0] = (20, 50, 1.0)  # wrist
    pose.left_hand[1] = (40, 50, 1.0)  # thumb 1: edge 0 [0, 1], HSV(0) = red
    pose.left_hand[5] = (20, 80, 1.0)  # index 1: edge 4 [0, 5], HSV(0.2) = (204, 255, 0)
    image = draw_pose(pose)
    assert pixel(image, 20, 50) == (0, 0, 255) and pixel(image, 40, 50) == (0, 0, 255)
    assert pixel(image, 43, 50) == (0, 0, 255) and pixel(image, 45, 50) == BLACK
    assert pixel(image, 30, 50) == (255, 0, 0)
    assert pixel(image, 20, 65) == (204, 255, 0)
    # A 2 px line: the rows beside the centre line, not further.
    assert pixel(image, 30, 49) == (255, 0, 0) or pixel(image, 30, 51) == (255, 0, 0)
    assert pixel(image, 30, 47) == BLACK and pixel(image, 30, 53) == BLACK
    assert not draw_pose(pose, hands=False).any()


def test_face_is_white_dots_of_radius_3_and_can_be_switched_off():
    pose = Pose(100, 100)
    pose.face[10] = (50, 50, 0.9)
    image = draw_pose(pose)
    assert pixel(image, 50, 50) == (255, 255, 255)
    assert pixel(image, 53, 50) == (255, 255, 255) and pixel(image, 50, 47) == (255, 255, 255)
    assert pixel(image, 55, 50) == BLACK
    assert not draw_pose(pose, face=False).any()


def test_body_switch_and_layer_order():
    pose = standing_pose()
    no_body = draw_pose(pose, body=False)
    x, y = STANDING["neck"]
    assert pixel(no_body, x, y) == BLACK
    # Hands are drawn over the body: the hand wrist joint is blue over the body's wrist disc.
    x, y = STANDING["right_wrist"]
    assert pixel(draw_pose(pose), x, y) == (0, 0, 255)


def test_stroke_scale_widens_strokes():
    assert stroke_scale_for(1024, 2048) == 2.0
    pose = standing_pose(with_hands=False, with_face=False)
    image = draw_pose(pose, stroke_scale=2.0)
    x, y = STANDING["right_wrist"]
    color = BODY_COLORS[BODY_INDEX["right_wrist"]]
    assert pixel(image, x, y + 8) == color and pixel(image, x, y + 10) == BLACK
    with pytest.raises(ValueError):
        draw_pose(pose, stroke_scale=0)


def test_points_outside_the_canvas_are_clipped_not_wrapped():
    image = draw_pose(two_point_pose("neck", (-30, 10), "right_shoulder", (12, 10), size=(20, 20)))
    assert all(image[10, x].any() for x in range(0, 17))
    assert not image[:, 18:].any()  # negative x must not wrap round to the right edge


def test_draw_sequence_draws_every_frame():
    seq = PoseSequence([standing_pose(), Pose(512, 512)], fps=10)
    images = list(draw_sequence(seq, hands=False))
    assert len(images) == 2 and images[0].any() and not images[1].any()
