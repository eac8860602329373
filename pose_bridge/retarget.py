"""Retargeting a driving pose sequence onto a reference skeleton (paper section 4.1).

Animate Anyone draws the driving motion's skeleton and asks the model to move the
reference character along it. A skeleton with other proportions than the character's
(a tall dancer driving a small cartoon figure) pulls the character out of shape, so the
driving skeleton's bone lengths are first made to approximate the reference's.

chain mode
    Every bone of the driving pose keeps its direction but takes the reference's length,
    bone by bone outward from the neck along the kinematic chain (BONES below):
    neck -> shoulders -> elbows -> wrists, neck -> hips -> knees -> ankles,
    neck -> nose -> eyes -> ears. The per-bone scale is
    reference length / driving length, where the driving length is the median over every
    frame in which both ends are present: one scale per bone for the whole sequence, so the
    motion keeps its own proportions over time (a foreshortened arm stays foreshortened).
    Hands are scaled by their forearm's scale and move with the wrist; the face by the
    neck -> nose scale and moves with the nose (or the neck when the nose is missing).
    The skeleton is then placed so that the driving anchor of the first frame that has one
    lands on the reference's anchor; later frames keep their root motion relative to that,
    scaled by the global scale.

global mode
    One scale (the ratio of summed bone lengths of the bones both skeletons have) and one
    offset (anchor on anchor, as above) for every point of every frame.

Missing data never explodes the result: a bone that cannot be measured (an end missing in
the reference or in every driving frame, or a zero length) takes its parent's scale, the
last sane scale along the chain, and the neck's bones take the global scale. A joint whose
parent is missing in a frame hangs from its nearest present ancestor; a frame without a
neck uses the midpoint of its shoulders, and a frame without either is placed with the
global transform. Missing points stay missing (confidence 0).

The result lives on the reference's canvas.
"""

from __future__ import annotations

import numpy as np

from pose_bridge.errors import PoseDataError
from pose_bridge.keypoints import BODY_INDEX, DRAW_CONFIDENCE, Pose, PoseSequence

MODES = ("chain", "global", "none")
ANCHORS = ("neck", "mid_hip")

NECK = BODY_INDEX["neck"]
NOSE = BODY_INDEX["nose"]

# (parent, child) body indices, parents before children: the kinematic chain from the neck.
BONES = tuple(
    (BODY_INDEX[a], BODY_INDEX[b])
    for a, b in (
        ("neck", "right_shoulder"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
        ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
        ("neck", "right_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
        ("neck", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
        ("neck", "nose"), ("nose", "right_eye"), ("right_eye", "right_ear"),
        ("nose", "left_eye"), ("left_eye", "left_ear"),
    )
)
PARENT = {child: parent for parent, child in BONES}
BONE_OF_CHILD = {child: i for i, (_, child) in enumerate(BONES)}

# The bone whose scale a hand takes (elbow -> wrist), by hand.
FOREARM = {
    "left_hand": BONE_OF_CHILD[BODY_INDEX["left_wrist"]],
    "right_hand": BONE_OF_CHILD[BODY_INDEX["right_wrist"]],
}
WRIST = {"left_hand": BODY_INDEX["left_wrist"], "right_hand": BODY_INDEX["right_wrist"]}
HEAD_BONE = BONE_OF_CHILD[NOSE]

# Bones shorter than this (pixels) are treated as unmeasurable.
MIN_BONE_LENGTH = 1e-3


def _present(points: np.ndarray) -> np.ndarray:
    return points[:, 2] >= DRAW_CONFIDENCE


def _bone_lengths(body: np.ndarray) -> np.ndarray:
    """Length of every bone of one body, NaN where an end is missing."""
    present = _present(body)
    out = np.full(len(BONES), np.nan)
    for i, (a, b) in enumerate(BONES):
        if present[a] and present[b]:
            out[i] = float(np.hypot(*(body[b, :2] - body[a, :2])))
    return out


def _driving_lengths(frames: list[Pose]) -> np.ndarray:
    """Median length of each bone over the frames where both its ends are present."""
    lengths = np.stack([_bone_lengths(p.body) for p in frames])
    out = np.full(len(BONES), np.nan)
    for i in range(len(BONES)):
        column = lengths[:, i]
        column = column[np.isfinite(column)]
        if len(column):
            out[i] = float(np.median(column))
    return out


def _global_scale(ref_lengths: np.ndarray, drv_lengths: np.ndarray) -> float:
    both = np.isfinite(ref_lengths) & np.isfinite(drv_lengths) & (drv_lengths > MIN_BONE_LENGTH)
    both &= ref_lengths > MIN_BONE_LENGTH
    if not both.any():
        return 1.0
    return float(ref_lengths[both].sum() / drv_lengths[both].sum())


def bone_scales(ref_lengths: np.ndarray, drv_lengths: np.ndarray, fallback: float) -> np.ndarray:
    """Per-bone scale; an unmeasurable bone inherits its parent bone's (the last sane) scale."""
    scales = np.empty(len(BONES))
    for i, (parent, _) in enumerate(BONES):
        r, d = ref_lengths[i], drv_lengths[i]
        if np.isfinite(r) and np.isfinite(d) and r > MIN_BONE_LENGTH and d > MIN_BONE_LENGTH:
            scales[i] = r / d
        elif parent in BONE_OF_CHILD:
            scales[i] = scales[BONE_OF_CHILD[parent]]
        else:
            scales[i] = fallback
    return scales


def _anchor(body: np.ndarray, anchor: str) -> np.ndarray | None:
    present = _present(body)
    if anchor == "neck":
        if present[NECK]:
            return body[NECK, :2].astype(np.float64)
        anchor = "shoulders"
    if anchor == "shoulders":
        r, l = BODY_INDEX["right_shoulder"], BODY_INDEX["left_shoulder"]
    else:
        r, l = BODY_INDEX["right_hip"], BODY_INDEX["left_hip"]
    if present[r] and present[l]:
        return (body[r, :2].astype(np.float64) + body[l, :2]) / 2.0
    return None


class _Placement:
    """Root placement shared by both modes: driving anchor of the first frame -> reference anchor."""

    def __init__(self, frames: list[Pose], reference: Pose, anchor: str, scale: float) -> None:
        ref_anchor = _anchor(reference.body, anchor)
        if ref_anchor is None:
            raise PoseDataError(
                f"the reference pose has no {anchor.replace('_', ' ')} (nor both shoulders/hips); "
                f"retargeting needs it to place the skeleton"
            )
        drv_anchor = next((a for a in (_anchor(p.body, anchor) for p in frames) if a is not None), None)
        if drv_anchor is None:
            # No frame has the anchor: centre the driving points' mean on it instead.
            points = np.concatenate([p.body[_present(p.body), :2] for p in frames] or [np.zeros((0, 2))])
            drv_anchor = points.mean(axis=0) if len(points) else ref_anchor
        self.ref_anchor = ref_anchor
        self.drv_anchor = np.asarray(drv_anchor, dtype=np.float64)
        self.scale = scale

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        return self.ref_anchor + (np.asarray(xy, dtype=np.float64) - self.drv_anchor) * self.scale


def _empty_like(pose: Pose, reference: Pose) -> Pose:
    out = pose.copy()
    out.canvas_width, out.canvas_height = reference.canvas_width, reference.canvas_height
    return out


def _store(points: np.ndarray, new_xy: np.ndarray, mask: np.ndarray) -> None:
    points[mask, :2] = new_xy[mask]
    points[~mask, :2] = 0.0  # missing points carry no position


def _global_frame(pose: Pose, reference: Pose, place: _Placement) -> Pose:
    out = _empty_like(pose, reference)
    for name, points in out.parts().items():
        present = points[:, 2] > 0
        _store(points, place(getattr(pose, name)[:, :2]), present)
    return out


def _chain_frame(pose: Pose, reference: Pose, scales: np.ndarray, place: _Placement, anchor: str) -> Pose:
    body = pose.body[:, :2].astype(np.float64)
    present = _present(pose.body)
    root = _anchor(pose.body, "neck")
    if root is None:
        return _global_frame(pose, reference, place)

    new = np.zeros_like(body)
    placed = np.zeros(len(body), dtype=bool)
    new_root = place(root)
    if present[NECK]:
        new[NECK], placed[NECK] = new_root, True

    def position(joint: int) -> tuple[np.ndarray, np.ndarray]:
        """Driving and new position of the nearest placed ancestor (the root if none)."""
        ancestor = PARENT.get(joint)
        while ancestor is not None and not placed[ancestor]:
            ancestor = PARENT.get(ancestor)
        if ancestor is None:
            return root, new_root
        return body[ancestor], new[ancestor]

    for i, (_, child) in enumerate(BONES):
        if present[child]:
            drv_from, new_from = position(child)
            new[child] = new_from + (body[child] - drv_from) * scales[i]
            placed[child] = True

    if anchor == "mid_hip":
        # Chain lengths are measured from the neck; shift the whole frame so its hips land right.
        hips = [BODY_INDEX["right_hip"], BODY_INDEX["left_hip"]]
        if placed[hips].all():
            shift = place(body[hips].mean(axis=0)) - new[hips].mean(axis=0)
            new[placed] += shift
            new_root = new_root + shift

    out = _empty_like(pose, reference)
    # Low-confidence points (below the drawing threshold) are not chained; the global
    # transform keeps them near where they belong.
    weak = (pose.body[:, 2] > 0) & ~placed
    new[weak] = place(body[weak])
    _store(out.body, new, placed | weak)

    for hand, wrist in WRIST.items():
        points = getattr(pose, hand)
        hand_present = points[:, 2] > 0
        if not hand_present.any():
            continue
        scale = scales[FOREARM[hand]]
        if placed[wrist]:
            moved = new[wrist] + (points[:, :2] - body[wrist]) * scale
        else:
            moved = place(points[:, :2])
        _store(getattr(out, hand), moved, hand_present)

    face_present = pose.face[:, 2] > 0
    if face_present.any():
        scale = scales[HEAD_BONE]
        if placed[NOSE]:
            moved = new[NOSE] + (pose.face[:, :2] - body[NOSE]) * scale
        else:
            moved = new_root + (pose.face[:, :2] - root) * scale
        _store(out.face, moved, face_present)
    return out


def retarget_sequence(
    driving: PoseSequence, reference: Pose, mode: str = "chain", anchor: str = "neck"
) -> PoseSequence:
    """The driving sequence with the reference's proportions, placed on the reference.

    mode: "chain" (per-bone lengths), "global" (one scale and offset) or "none" (a copy).
    anchor: "neck" or "mid_hip", the point placed on the reference's same point.
    """
    if mode not in MODES:
        raise PoseDataError(f"retarget mode must be one of {', '.join(MODES)}, got {mode!r}")
    if anchor not in ANCHORS:
        raise PoseDataError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
    frames = list(driving.frames)
    if mode == "none":
        return PoseSequence([p.copy() for p in frames], driving.fps)

    ref_lengths = _bone_lengths(reference.body)
    drv_lengths = _driving_lengths(frames)
    scale = _global_scale(ref_lengths, drv_lengths)
    place = _Placement(frames, reference, anchor, scale)
    if mode == "global":
        return PoseSequence([_global_frame(p, reference, place) for p in frames], driving.fps)
    scales = bone_scales(ref_lengths, drv_lengths, scale)
    return PoseSequence([_chain_frame(p, reference, scales, place, anchor) for p in frames], driving.fps)


def retarget_pose(pose: Pose, reference: Pose, mode: str = "chain", anchor: str = "neck") -> Pose:
    """retarget_sequence for a single pose."""
    return retarget_sequence(PoseSequence([pose]), reference, mode=mode, anchor=anchor).frames[0]
