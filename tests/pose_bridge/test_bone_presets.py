"""Armature presets: every family maps the body, auto-detection picks the family, geometry is right."""

from __future__ import annotations

import numpy as np
import pytest

from pose_bridge.bone_presets import (
    PRESETS,
    BoneFrame,
    BoneMidpoint,
    BoneOffset,
    BonePoint,
    evaluate_source,
    match_preset,
)
from pose_bridge.keypoints import BODY_INDEX, BODY_NAMES, HAND_NAMES, neck_from_shoulders, set_neck_from_shoulders


def sides(names: list[str], left: str, right: str) -> list[str]:
    return [n.replace("{s}", left) for n in names] + [n.replace("{s}", right) for n in names]


RIGIFY_META = ["spine", "spine.001", "spine.002", "spine.003", "spine.004", "spine.005", "spine.006",
               "face", "nose", "nose.001", "eye.L", "eye.R", "ear.L", "ear.R", "jaw"] + sides(
    ["shoulder.{s}", "upper_arm.{s}", "forearm.{s}", "hand.{s}", "palm.01.{s}", "palm.02.{s}", "palm.03.{s}",
     "palm.04.{s}", "thumb.01.{s}", "thumb.02.{s}", "thumb.03.{s}", "f_index.01.{s}", "f_index.02.{s}",
     "f_index.03.{s}", "f_middle.01.{s}", "f_middle.02.{s}", "f_middle.03.{s}", "f_ring.01.{s}", "f_ring.02.{s}",
     "f_ring.03.{s}", "f_pinky.01.{s}", "f_pinky.02.{s}", "f_pinky.03.{s}", "breast.{s}", "pelvis.{s}",
     "thigh.{s}", "shin.{s}", "foot.{s}", "toe.{s}", "heel.02.{s}"], "L", "R")

RIGIFY_GENERATED = ["root", "torso", "hips", "chest", "neck", "head", "MCH-torso.parent",
                    "ORG-spine", "ORG-spine.001", "ORG-spine.004", "ORG-spine.006", "ORG-eye.L", "ORG-eye.R",
                    "ORG-nose", "DEF-spine", "DEF-spine.001", "DEF-spine.002", "DEF-spine.003", "DEF-spine.004",
                    "DEF-spine.005", "DEF-spine.006"] + sides(
    ["DEF-shoulder.{s}", "DEF-upper_arm.{s}", "DEF-upper_arm.{s}.001", "DEF-forearm.{s}", "DEF-forearm.{s}.001",
     "DEF-hand.{s}", "DEF-thigh.{s}", "DEF-thigh.{s}.001", "DEF-shin.{s}", "DEF-shin.{s}.001", "DEF-foot.{s}",
     "DEF-toe.{s}", "ORG-upper_arm.{s}", "ORG-forearm.{s}", "ORG-hand.{s}", "ORG-thigh.{s}", "ORG-shin.{s}",
     "ORG-foot.{s}", "upper_arm_fk.{s}", "forearm_fk.{s}", "hand_fk.{s}", "upper_arm_ik.{s}", "hand_ik.{s}",
     "thigh_fk.{s}", "shin_fk.{s}", "foot_fk.{s}", "thigh_ik.{s}", "foot_ik.{s}",
     "DEF-thumb.01.{s}", "DEF-thumb.02.{s}", "DEF-thumb.03.{s}", "DEF-f_index.01.{s}", "DEF-f_index.02.{s}",
     "DEF-f_index.03.{s}", "DEF-f_middle.01.{s}", "DEF-f_middle.02.{s}", "DEF-f_middle.03.{s}",
     "DEF-f_ring.01.{s}", "DEF-f_ring.02.{s}", "DEF-f_ring.03.{s}", "DEF-f_pinky.01.{s}", "DEF-f_pinky.02.{s}",
     "DEF-f_pinky.03.{s}"], "L", "R")

MIXAMO_PLAIN = ["Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "HeadTop_End", "LeftEye", "RightEye"] + sides(
    ["{s}Shoulder", "{s}Arm", "{s}ForeArm", "{s}Hand"]
    + [f"{{s}}Hand{f}{i}" for f in ("Thumb", "Index", "Middle", "Ring", "Pinky") for i in range(1, 5)]
    + ["{s}UpLeg", "{s}Leg", "{s}Foot", "{s}ToeBase", "{s}Toe_End"], "Left", "Right")

BVH_CMU = ["Hips", "LHipJoint", "RHipJoint", "LowerBack", "Spine", "Spine1", "Neck", "Neck1", "Head",
           "LThumb", "RThumb"] + sides(
    ["{s}UpLeg", "{s}Leg", "{s}Foot", "{s}ToeBase", "{s}Shoulder", "{s}Arm", "{s}ForeArm", "{s}Hand",
     "{s}FingerBase", "{s}HandIndex1"], "Left", "Right")

# The CMU library as converted for 3ds Max: <Side>Shoulder is the upper arm here, <Side>Collar the clavicle.
BVH_CMU_MAX = ["Hips", "Chest", "Chest2", "Chest3", "Chest4", "Neck", "Head"] + sides(
    ["{s}Collar", "{s}Shoulder", "{s}Elbow", "{s}Wrist", "{s}Hip", "{s}Knee", "{s}Ankle", "{s}Toe"], "Left", "Right")

VROID = ["Root", "J_Bip_C_Hips", "J_Bip_C_Spine", "J_Bip_C_Chest", "J_Bip_C_UpperChest", "J_Bip_C_Neck",
         "J_Bip_C_Head", "J_Adj_L_FaceEye", "J_Adj_R_FaceEye"] + sides(
    ["J_Bip_{s}_Shoulder", "J_Bip_{s}_UpperArm", "J_Bip_{s}_LowerArm", "J_Bip_{s}_Hand",
     "J_Bip_{s}_UpperLeg", "J_Bip_{s}_LowerLeg", "J_Bip_{s}_Foot", "J_Bip_{s}_ToeBase"]
    + [f"J_Bip_{{s}}_{f}{i}" for f in ("Thumb", "Index", "Middle", "Ring", "Little") for i in range(1, 4)],
    "L", "R")

VRM_HUMANOID = ["hips", "spine", "chest", "upperChest", "neck", "head", "leftEye", "rightEye"] + sides(
    ["{s}Shoulder", "{s}UpperArm", "{s}LowerArm", "{s}Hand", "{s}UpperLeg", "{s}LowerLeg", "{s}Foot", "{s}Toes",
     "{s}ThumbMetacarpal", "{s}ThumbProximal", "{s}ThumbDistal"]
    + [f"{{s}}{f}{j}" for f in ("Index", "Middle", "Ring", "Little") for j in ("Proximal", "Intermediate", "Distal")],
    "left", "right")

UNREAL = ["root", "pelvis", "spine_01", "spine_02", "spine_03", "neck_01", "head", "ik_foot_root", "ik_hand_root"] + sides(
    ["clavicle_{s}", "upperarm_{s}", "lowerarm_{s}", "hand_{s}", "thigh_{s}", "calf_{s}", "foot_{s}", "ball_{s}",
     "upperarm_twist_01_{s}", "lowerarm_twist_01_{s}", "thigh_twist_01_{s}", "calf_twist_01_{s}"]
    + [f"{f}_0{i}_{{s}}" for f in ("thumb", "index", "middle", "ring", "pinky") for i in range(1, 4)], "l", "r")

AUTO_RIG_PRO = ["root.x", "c_root_master.x", "c_traj", "spine_01.x", "spine_02.x", "neck.x", "head.x",
                "c_neck.x", "c_head.x", "c_spine_01.x"] + sides(
    ["shoulder.{s}", "arm_stretch.{s}", "forearm_stretch.{s}", "hand.{s}", "thigh_stretch.{s}", "leg_stretch.{s}",
     "foot.{s}", "toes_01.{s}", "c_eye.{s}", "c_foot_ik.{s}", "c_hand_ik.{s}", "c_arm_fk.{s}", "c_forearm_fk.{s}",
     "c_hand_fk.{s}", "arm_twist.{s}", "forearm_twist.{s}"]
    + [f"c_{f}{i}.{{s}}" for f in ("thumb", "index", "middle", "ring", "pinky") for i in range(1, 4)], "l", "r")

FAMILIES = {
    "rigify_meta": RIGIFY_META,
    "rigify_generated": RIGIFY_GENERATED,
    "mixamo": ["mixamorig:" + n for n in MIXAMO_PLAIN],
    "mixamo_numbered_prefix": ["mixamorig1:" + n for n in MIXAMO_PLAIN],
    "mixamo_no_prefix": MIXAMO_PLAIN,
    "bvh_cmu": BVH_CMU,
    "bvh_cmu_max": BVH_CMU_MAX,
    "mixamo_glued_prefix": ["mixamorig" + n for n in MIXAMO_PLAIN],
    "mixamo_underscore_prefix": ["mixamorig_" + n for n in MIXAMO_PLAIN],
    "vrm_vroid": VROID,
    "vrm_humanoid": VRM_HUMANOID,
    "unreal_mannequin": UNREAL,
    "auto_rig_pro": AUTO_RIG_PRO,
}
EXPECTED = {
    "mixamo_numbered_prefix": "mixamo", "mixamo_no_prefix": "mixamo", "mixamo_glued_prefix": "mixamo",
    "mixamo_underscore_prefix": "mixamo", "vrm_vroid": "vrm", "vrm_humanoid": "vrm",
}
WITH_FINGERS = {"rigify_meta", "rigify_generated", "mixamo", "mixamo_numbered_prefix", "mixamo_no_prefix",
                "mixamo_glued_prefix", "mixamo_underscore_prefix", "vrm_vroid", "vrm_humanoid", "unreal_mannequin",
                "auto_rig_pro"}


def frames_for(bone_names) -> dict[str, BoneFrame]:
    """Every bone a distinct upright frame, so each source evaluates to a finite point."""
    out = {}
    for i, name in enumerate(sorted(bone_names)):
        head = np.array([i * 0.01, 0.0, 1.0 + i * 0.001])
        out[name] = BoneFrame(head, head + [0.0, 0.0, 0.1], np.array([1.0, 0, 0]), np.array([0, -1.0, 0]))
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_is_detected_and_maps_the_whole_body(family):
    bones = FAMILIES[family]
    match = match_preset(bones)
    assert match is not None
    assert match.preset.name == EXPECTED.get(family, family)
    assert not [name for name in match.unmapped if name in BODY_NAMES]
    assert set(match.body) == set(BODY_NAMES)
    frames = frames_for(bones)
    for name, source in match.body.items():
        assert evaluate_source(source, frames) is not None, name
    # Resolved sources name real bones of this rig (prefixes included).
    for source in match.body.values():
        for bone in ([source.first.bone, source.second.bone] if isinstance(source, BoneMidpoint) else [source.bone]):
            assert bone in bones
    if family in WITH_FINGERS:
        assert set(match.left_hand) == set(HAND_NAMES) and set(match.right_hand) == set(HAND_NAMES)


def test_mixamo_prefix_is_resolved_and_sides_are_right():
    match = match_preset(FAMILIES["mixamo"])
    assert match.body["left_elbow"] == BonePoint("mixamorig:LeftForeArm", "head")
    assert match.body["right_knee"] == BonePoint("mixamorig:RightLeg", "head")
    assert match.body["left_eye"] == BonePoint("mixamorig:LeftEye", "head")  # a real eye bone beats the offset
    assert match.right_hand["index_4"] == BonePoint("mixamorig:RightHandIndex4", "head")


def test_rules_for_points_without_bones():
    # Shoulders/hips are the upper arm / thigh heads; without eye bones the face comes from the head bone.
    match = match_preset(FAMILIES["unreal_mannequin"])
    assert match.body["right_shoulder"] == BonePoint("upperarm_r", "head")
    assert match.body["left_hip"] == BonePoint("thigh_l", "head")
    assert isinstance(match.body["nose"], BoneOffset) and match.body["nose"].bone == "head"
    # A rig without a neck bone gets the neck as the middle of the shoulders.
    no_neck = [b for b in FAMILIES["unreal_mannequin"] if b != "neck_01"]
    neck = match_preset(no_neck).body["neck"]
    assert neck == BoneMidpoint(BonePoint("upperarm_r"), BonePoint("upperarm_l"))


def test_unmapped_keypoints_are_listed():
    bones = [b for b in FAMILIES["bvh_cmu"] if "Left" not in b and b != "LThumb"]
    match = match_preset(bones)
    assert match.preset.name == "bvh_cmu"
    assert {"left_shoulder", "left_elbow", "left_wrist", "left_hip", "left_knee", "left_ankle"} <= set(match.unmapped)
    assert "left_hand.wrist" in match.unmapped
    assert match_preset(["Cube", "Bone", "Bone.001"]) is None


def test_evaluate_source_geometry():
    # A head bone 0.2 long pointing up (+Z), X to the character's left (+X), Z (the face) towards -Y.
    head = BoneFrame(np.array([0.0, 0.0, 1.5]), np.array([0.0, 0.0, 1.7]), np.array([1.0, 0, 0]), np.array([0, -1.0, 0]))
    bones = {"Head": head}
    np.testing.assert_allclose(evaluate_source(BonePoint("Head", "tail"), bones), (0, 0, 1.7))
    np.testing.assert_allclose(evaluate_source(BoneOffset("Head", (0.17, 0.5, 0.45)), bones),
                               (0.2 * 0.17, -0.2 * 0.45, 1.5 + 0.2 * 0.5))
    mid = BoneMidpoint(BonePoint("Head", "head"), BonePoint("Head", "tail"))
    np.testing.assert_allclose(evaluate_source(mid, bones), (0, 0, 1.6))
    assert evaluate_source(BonePoint("Missing"), bones) is None
    # Alternatives: the first that evaluates wins.
    np.testing.assert_allclose(evaluate_source((BonePoint("Missing"), BonePoint("Head")), bones), (0, 0, 1.5))


def test_face_points_sit_in_front_of_the_head_and_on_the_right_sides():
    preset = PRESETS["mixamo"]
    head = BoneFrame(np.array([0.0, 0.0, 1.5]), np.array([0.0, 0.0, 1.7]), np.array([1.0, 0, 0]), np.array([0, -1.0, 0]))
    bones = {"Head": head}
    nose = evaluate_source(preset.body["nose"][0] if isinstance(preset.body["nose"], tuple) else preset.body["nose"], bones)
    right_ear = evaluate_source(preset.body["right_ear"], bones)
    left_eye = evaluate_source(preset.body["left_eye"], bones)  # no eye bone here: the offset rule
    assert nose[1] < 0  # in front (Blender characters face -Y)
    assert right_ear[0] < 0 < left_eye[0]  # the subject's right is -X
    assert 1.5 < nose[2] < 1.7


def test_the_neck_is_the_mean_of_the_shoulders_when_both_are_there():
    body = np.zeros((18, 3), np.float32)
    body[BODY_INDEX["right_shoulder"]] = (100.0, 50.0, 0.9)
    body[BODY_INDEX["left_shoulder"]] = (140.0, 54.0, 0.6)
    body[BODY_INDEX["neck"]] = (120.0, 30.0, 1.0)  # a rig's neck bone, above the shoulder line
    np.testing.assert_allclose(neck_from_shoulders(body), (120.0, 52.0, 0.6))
    assert set_neck_from_shoulders(body) is body
    np.testing.assert_allclose(body[BODY_INDEX["neck"]], (120.0, 52.0, 0.6))
    # One shoulder missing or too uncertain to draw: no neck (DWPose's rule).
    body[BODY_INDEX["left_shoulder"]] = (140.0, 54.0, 0.2)
    assert not neck_from_shoulders(body).any()
    body[BODY_INDEX["left_shoulder"]] = 0
    assert not set_neck_from_shoulders(body)[BODY_INDEX["neck"]].any()


def test_rigify_face_points_come_from_its_face_bones():
    meta = match_preset(FAMILIES["rigify_meta"])
    # "nose" runs from the bridge down the nose; the tip is the tail of nose.001.
    assert meta.body["nose"] == BonePoint("nose.001", "tail")
    assert meta.body["left_ear"] == BonePoint("ear.L", "head")
    generated = match_preset(FAMILIES["rigify_generated"] + ["nose.001", "ORG-nose.001", "DEF-nose.001"])
    # A generated rig's control "nose.001" has another tail: the deforming copy is used.
    assert generated.body["nose"] == BonePoint("DEF-nose.001", "tail")
    without_face = match_preset([b for b in FAMILIES["rigify_generated"] if "nose" not in b])
    assert isinstance(without_face.body["nose"], BoneOffset)  # no nose bones: the head-bone rule


def test_cmu_3ds_max_naming_reads_shoulder_as_the_upper_arm():
    match = match_preset(BVH_CMU_MAX)
    assert match.preset.name == "bvh_cmu_max"
    assert match.body["left_shoulder"] == BonePoint("LeftShoulder")
    assert match.body["left_elbow"] == BonePoint("LeftElbow")
    assert match.body["right_ankle"] == BonePoint("RightAnkle")
    assert match.left_hand["wrist"] == BonePoint("LeftWrist")
    # In the MotionBuilder naming (and Mixamo's) the same name is the collar bone.
    assert match_preset(BVH_CMU).body["left_shoulder"] == BonePoint("LeftArm")


def test_bvh_finger_joints_are_mapped_where_the_file_has_them():
    cmu = match_preset(BVH_CMU)
    assert cmu.left_hand["thumb_1"] == BonePoint("LThumb") and cmu.left_hand["thumb_4"] == BonePoint("LThumb", "tail")
    assert cmu.left_hand["index_1"] == BonePoint("LeftHandIndex1")
    assert cmu.left_hand["index_4"] == BonePoint("LeftHandIndex1", "tail")
    assert "left_hand.middle_1" in cmu.unmapped  # CMU has no middle finger joints
    # A CMU-style file with whole finger chains (the names MotionBuilder-style BVH files use).
    chains = [f"{{s}}Hand{f}{i}" for f in ("Thumb", "Index", "Middle", "Ring", "Pinky") for i in (1, 2, 3)]
    full = match_preset(BVH_CMU + sides(chains, "Left", "Right"))
    assert full.preset.name == "bvh_cmu"
    assert set(full.right_hand) == set(HAND_NAMES)
    assert full.right_hand["middle_2"] == BonePoint("RightHandMiddle2")
    assert full.right_hand["index_4"] == BonePoint("RightHandIndex3", "tail")
    assert full.right_hand["thumb_4"] == BonePoint("RightHandThumb3", "tail")
