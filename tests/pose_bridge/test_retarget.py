"""Retargeting (paper 4.1): bone lengths of the reference, directions and timing of the driving motion."""

from __future__ import annotations

import numpy as np
import pytest
from pose_samples import standing_pose

from pose_bridge.errors import PoseDataError
from pose_bridge.keypoints import BODY_INDEX, Pose, PoseSequence
from pose_bridge.retarget import BONES, retarget_pose, retarget_sequence


def bone_lengths(pose: Pose) -> np.ndarray:
    return np.array([np.hypot(*(pose.body[b, :2] - pose.body[a, :2])) for a, b in BONES])


def transformed(pose: Pose, scale: float, shift, size=(900, 900)) -> Pose:
    out = pose.copy()
    out.canvas_width, out.canvas_height = size
    for points in out.parts().values():
        present = points[:, 2] > 0
        points[present, :2] = points[present, :2] * scale + np.asarray(shift, dtype=np.float32)
    return out


def test_scaled_and_shifted_reference_gives_back_the_reference_lengths():
    reference = standing_pose()
    driving = PoseSequence([transformed(reference, 1.5, (40 + 5 * i, -20)) for i in range(4)], fps=24)
    for mode in ("chain", "global"):
        result = retarget_sequence(driving, reference, mode=mode)
        assert result.canvas_width == 512 and len(result) == 4
        for frame in result:
            np.testing.assert_allclose(bone_lengths(frame), bone_lengths(reference), rtol=0.02)
        # The first frame lands on the reference; later frames keep their (scaled) root motion.
        np.testing.assert_allclose(result[0].body[:, :2], reference.body[:, :2], atol=1e-3)
        np.testing.assert_allclose(result[3].body[:, 0] - result[0].body[:, 0], 15 / 1.5, atol=1e-3)
        # Hands and face come along, scaled the same way.
        np.testing.assert_allclose(result[0].left_hand[:, :2], reference.left_hand[:, :2], atol=1e-3)
        np.testing.assert_allclose(result[0].face[:, :2], reference.face[:, :2], atol=1e-3)


def rotate(vector, degrees):
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ vector


def moving_driver(frames: int = 8) -> PoseSequence:
    """Another body (long arms, short legs) waving its right arm, translated over time."""
    base = standing_pose(with_hands=False, with_face=False)
    body = base.body.copy()
    neck = body[BODY_INDEX["neck"], :2].copy()
    for name, factor in (("right_shoulder", 1.1), ("left_shoulder", 1.1), ("right_hip", 0.9), ("left_hip", 0.9)):
        i = BODY_INDEX[name]
        body[i, :2] = neck + (body[i, :2] - neck) * factor
    poses = []
    for t in range(frames):
        pose = Pose(512, 512, body=body.copy())
        b = pose.body
        s, e, w = BODY_INDEX["right_shoulder"], BODY_INDEX["right_elbow"], BODY_INDEX["right_wrist"]
        b[e, :2] = b[s, :2] + rotate(np.array([0.0, 1.3 * 72.8]), 20 * t)
        b[w, :2] = b[e, :2] + rotate(np.array([0.0, 1.3 * 70.7]), 35 * t)
        for name in ("right_knee", "left_knee"):
            i = BODY_INDEX[name]
            parent = BODY_INDEX[name.replace("knee", "hip")]
            b[i, :2] = b[parent, :2] + np.array([0.0, 0.8 * 90.0])
        b[:, 0] += 3 * t
        poses.append(pose)
    return PoseSequence(poses, fps=24)


def test_chain_mode_keeps_directions_and_takes_reference_lengths():
    reference = standing_pose(with_hands=False, with_face=False)
    driving = moving_driver()
    result = retarget_sequence(driving, reference, mode="chain")
    for drv, out in zip(driving, result):
        np.testing.assert_allclose(bone_lengths(out), bone_lengths(reference), rtol=0.02)
        for a, b in BONES:
            d = drv.body[b, :2] - drv.body[a, :2]
            o = out.body[b, :2] - out.body[a, :2]
            cosine = d @ o / np.linalg.norm(d) / np.linalg.norm(o)
            assert cosine > 0.9999, (a, b)


def test_per_bone_scale_is_measured_over_the_sequence_not_per_frame():
    reference = standing_pose(with_hands=False, with_face=False)
    driving = moving_driver(5)
    # Foreshorten the forearm in one frame: that frame keeps a short forearm after retargeting.
    short = driving[2].body
    e, w = BODY_INDEX["right_elbow"], BODY_INDEX["right_wrist"]
    short[w, :2] = short[e, :2] + (short[w, :2] - short[e, :2]) * 0.5
    result = retarget_sequence(driving, reference)
    ref_forearm = np.hypot(*(reference.body[w, :2] - reference.body[e, :2]))
    out_forearm = np.hypot(*(result[2].body[w, :2] - result[2].body[e, :2]))
    assert out_forearm == pytest.approx(ref_forearm * 0.5, rel=0.02)


def test_missing_joints_do_not_explode():
    reference = standing_pose()
    reference.body[BODY_INDEX["left_ear"]] = 0  # the reference lacks a bone: the parent's scale is used
    driving = [transformed(standing_pose(), 1.5, (10, 10)) for _ in range(4)]
    driving[1].body[BODY_INDEX["right_elbow"], 2] = 0.0  # occluded in one frame
    for pose in driving:
        pose.body[BODY_INDEX["left_wrist"]] = 0.0  # never seen
    driving[2].body[BODY_INDEX["neck"]] = 0.0  # no neck: the shoulders' midpoint stands in
    driving[3].body[BODY_INDEX["right_hip"], :2] = driving[3].body[BODY_INDEX["neck"], :2]  # a zero-length bone
    result = retarget_sequence(PoseSequence(driving), reference)
    for frame in result:
        for points in frame.parts().values():
            assert np.isfinite(points).all()
            assert (np.abs(points[:, :2]) < 2000).all()
    assert result[1].body[BODY_INDEX["right_elbow"], 2] == 0 and not result[1].body[BODY_INDEX["right_elbow"], :2].any()
    assert all(f.body[BODY_INDEX["left_wrist"], 2] == 0 for f in result)
    # The wrist without its elbow hangs from the shoulder and stays where the reference's is.
    w = BODY_INDEX["right_wrist"]
    np.testing.assert_allclose(result[1].body[w, :2], reference.body[w, :2], atol=1.0)
    # The frame without a neck is still the reference's body.
    np.testing.assert_allclose(result[2].body[BODY_INDEX["right_knee"], :2], reference.body[BODY_INDEX["right_knee"], :2], atol=1.0)


def test_hands_follow_the_wrist_scaled_by_the_forearm():
    reference = standing_pose()
    driving = standing_pose()
    e, w = BODY_INDEX["left_elbow"], BODY_INDEX["left_wrist"]
    driving.body[w, :2] = driving.body[e, :2] + (driving.body[w, :2] - driving.body[e, :2]) * 2.0
    driving.left_hand[:, :2] += driving.body[w, :2] - reference.body[w, :2]
    out = retarget_pose(driving, reference)
    np.testing.assert_allclose(out.body[w, :2], reference.body[w, :2], atol=1e-3)
    expected = reference.body[w, :2] + (reference.left_hand[:, :2] - reference.body[w, :2]) * 0.5
    np.testing.assert_allclose(out.left_hand[:, :2], expected, atol=1e-3)


def test_mid_hip_anchor_and_bad_arguments():
    reference = standing_pose()
    driving = PoseSequence([transformed(reference, 0.5, (100, 30))])
    out = retarget_sequence(driving, reference, anchor="mid_hip")
    np.testing.assert_allclose(out[0].body[:, :2], reference.body[:, :2], atol=1e-3)
    with pytest.raises(PoseDataError, match="mode"):
        retarget_sequence(driving, reference, mode="stretch")
    empty_reference = Pose(512, 512)
    with pytest.raises(PoseDataError, match="reference"):
        retarget_sequence(driving, empty_reference)
    assert retarget_sequence(driving, reference, mode="none")[0].size == (900, 900)
