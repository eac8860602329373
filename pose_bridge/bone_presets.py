"""Which bone of a rig gives each keypoint: presets for the common rig families, as data.

(About 580 lines, most of them the preset tables themselves.)

The add-on projects bone positions through the camera to get 2D keypoints. This module
says which bone, and which end of it, each OpenPose keypoint comes from, for each rig
family; it has no bpy in it, so it is tested without Blender.

Sources of a point
    BonePoint(bone, end)       the bone's head or tail.
    BoneOffset(bone, offset)   a point fixed to a bone: offset (x, y, z) in units of the bone's
                               length, in the bone's own axes (Y from head to tail, X = x_axis,
                               Z = z_axis), measured from the head. Used for the face points
                               (nose, eyes, ears) that rigs rarely have bones for.
    BoneMidpoint(first, second) the middle of two points (the neck as mid-shoulders).
    A preset may give a tuple of sources for one keypoint: the first one the rig can
    evaluate is used (e.g. a real eye bone if there is one, else an offset from the head).

Rules for keypoints without a bone (docs/skeleton.md)
    Shoulders are the upper arm's head, hips the thigh's head. The neck a skeleton is drawn
    with is the mean of the two projected shoulders (keypoints.neck_from_shoulders, DWPose's
    rule, applied by the add-on after projection); a preset's "neck" entry is the rig's own
    neck bone (its head, else the midpoint of the shoulders), used only when the user asks
    for the rig's neck instead. Nose, eyes and ears come from face bones where the family
    has them (Rigify: the nose tip is the tail of nose.001, the ears the heads of ear.L/.R),
    else from the head bone,
    with HEAD_OFFSETS: the head bone runs from the top of the neck up to the crown (+Y up),
    X points to the character's left (Blender's +X side, ".L"), and the face is on +Z for
    every family here: a head bone pointing straight up with roll 0, as metarigs, Mixamo
    and VRoid imports, Unreal and Auto-Rig Pro rigs have it, has its Z axis towards -Y, the
    way Blender characters face. A rig whose head roll differs gets the front/back of the
    face points mirrored only; the add-on passes each bone's real axes. The offsets are
    those of a typical human head (eyes half way up the head bone and a little forward,
    ears at the sides); they are approximations and only matter for rigs without face bones.

Bone names are as Blender shows them. Names with a namespace prefix ("mixamorig:Hips",
"mixamorig1:Hips", "Armature|Hips"... anything up to the last ':' or '|'), Mixamo's prefix
written without the colon ("mixamorigHips", "mixamorig_Hips", as some glTF and FBX
exports spell it) and case differences are resolved by match_preset.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pose_bridge.keypoints import BODY_NAMES, HAND_NAMES


@dataclass(frozen=True)
class BoneFrame:
    """A bone's position and axes (in any one space: armature, world or camera)."""

    head: np.ndarray
    tail: np.ndarray
    x_axis: np.ndarray
    z_axis: np.ndarray


@dataclass(frozen=True)
class BonePoint:
    bone: str
    end: str = "head"  # "head" or "tail"

    def __post_init__(self) -> None:
        if self.end not in ("head", "tail"):
            raise ValueError(f"end must be 'head' or 'tail', got {self.end!r}")


@dataclass(frozen=True)
class BoneOffset:
    bone: str
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class BoneMidpoint:
    first: BonePoint
    second: BonePoint


Source = BonePoint | BoneOffset | BoneMidpoint
# A keypoint's entry in a preset: one source, or alternatives tried in order.
SourceSpec = Source | tuple[Source, ...]

# Face points as offsets from the head bone (see the module docstring): (x, y, z).
HEAD_OFFSETS = {
    "nose": (0.0, 0.35, 0.55),
    "right_eye": (-0.17, 0.5, 0.45),
    "left_eye": (0.17, 0.5, 0.45),
    "right_ear": (-0.42, 0.42, 0.0),
    "left_ear": (0.42, 0.42, 0.0),
}


@dataclass(frozen=True)
class ArmaturePreset:
    """One rig family: the source of each body keypoint (BODY_NAMES) and hand keypoint (HAND_NAMES).

    markers: bone names typical of the family that no keypoint uses (e.g. Mixamo's
    HeadTop_End); they only help match_preset tell similar families apart.
    """

    name: str
    label: str
    body: dict[str, SourceSpec]
    left_hand: dict[str, SourceSpec] = field(default_factory=dict)
    right_hand: dict[str, SourceSpec] = field(default_factory=dict)
    markers: tuple[str, ...] = ()


@dataclass
class PresetMatch:
    """A preset resolved against one rig: every source names a bone the rig really has."""

    preset: ArmaturePreset
    body: dict[str, Source]
    left_hand: dict[str, Source]
    right_hand: dict[str, Source]
    unmapped: list[str]
    score: float


# --------------------------------------------------------------------------- building helpers


def _head(bone: str) -> BonePoint:
    return BonePoint(bone, "head")


def _tail(bone: str) -> BonePoint:
    return BonePoint(bone, "tail")


def _face(head_bone: str, eyes: tuple[str, str] | None = None) -> dict[str, SourceSpec]:
    """nose/eyes/ears: real eye bones first when the family has them, else head-bone offsets."""
    out: dict[str, SourceSpec] = {name: BoneOffset(head_bone, offset) for name, offset in HEAD_OFFSETS.items()}
    if eyes:
        out["right_eye"] = (_head(eyes[0]), out["right_eye"])
        out["left_eye"] = (_head(eyes[1]), out["left_eye"])
    return out


def _body(
    neck: SourceSpec, head: str, arm: dict[str, tuple[str, str]], leg: dict[str, tuple[str, str]],
    eyes: tuple[str, str] | None = None,
) -> dict[str, SourceSpec]:
    """arm/leg: keypoint base name -> (right bone, left bone), each giving the point by its head."""
    body: dict[str, SourceSpec] = {"neck": neck}
    for part in (arm, leg):
        for joint, (right, left) in part.items():
            body[f"right_{joint}"] = _head(right)
            body[f"left_{joint}"] = _head(left)
    body.update(_face(head, eyes))
    return {name: body[name] for name in BODY_NAMES}


def _neck(neck_bone: str, right_arm: str, left_arm: str) -> tuple[Source, ...]:
    return (_head(neck_bone), BoneMidpoint(_head(right_arm), _head(left_arm)))


def _hand(wrist: str, fingers: dict[str, list[SourceSpec]]) -> dict[str, SourceSpec]:
    """fingers: finger name -> the four sources of points 1..4 (palm to tip)."""
    out: dict[str, SourceSpec] = {"wrist": _head(wrist)}
    for finger, sources in fingers.items():
        for i, source in enumerate(sources, start=1):
            out[f"{finger}_{i}"] = source
    return {name: out[name] for name in HAND_NAMES if name in out}


def _three_bone_fingers(name: Callable[[str, int], str]) -> dict[str, list[SourceSpec]]:
    """Fingers of three bones each (name(finger, 1..3)): points are the heads, then the last tail.

    For the thumb, bone 1 is the metacarpal, so its head is OpenPose's thumb_1 (CMC joint).
    """
    out = {}
    for finger in ("thumb", "index", "middle", "ring", "little"):
        out[finger] = [_head(name(finger, 1)), _head(name(finger, 2)), _head(name(finger, 3)), _tail(name(finger, 3))]
    return out


# --------------------------------------------------------------------------- the families


def _rigify(prefixes: tuple[str, ...], face_prefixes: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """Rigify's keypoints, with each bone name tried with each prefix in turn.

    The metarig uses the plain names (prefixes ("",)); a generated rig has the deforming
    DEF- copies and the ORG- originals (face bones only as ORG-/MCH-).
    """

    def point(bone: str, end: str = "head", among: tuple[str, ...] = prefixes) -> tuple[Source, ...]:
        return tuple(BonePoint(p + bone, end) for p in among)

    def offset(name: str) -> tuple[Source, ...]:
        return tuple(BoneOffset(p + "spine.006", HEAD_OFFSETS[name]) for p in prefixes)

    shoulders = BoneMidpoint(BonePoint(prefixes[0] + "upper_arm.R"), BonePoint(prefixes[0] + "upper_arm.L"))
    body: dict[str, SourceSpec] = {
        "neck": point("spine.004") + (shoulders,),
        # "nose" runs from the bridge between the eyes down to nose.001, whose tail is the tip.
        "nose": point("nose.001", "tail", among=face_prefixes) + offset("nose"),
    }
    for side, s in (("right", "R"), ("left", "L")):
        body[f"{side}_shoulder"] = point(f"upper_arm.{s}")
        body[f"{side}_elbow"] = point(f"forearm.{s}")
        body[f"{side}_wrist"] = point(f"hand.{s}")
        body[f"{side}_hip"] = point(f"thigh.{s}")
        body[f"{side}_knee"] = point(f"shin.{s}")
        body[f"{side}_ankle"] = point(f"foot.{s}")
        body[f"{side}_eye"] = point(f"eye.{s}", among=face_prefixes) + offset(f"{side}_eye")
        # ear.L/.R start at the front of the ear, where it meets the head.
        body[f"{side}_ear"] = point(f"ear.{s}", among=face_prefixes) + offset(f"{side}_ear")
    body = {name: body[name] for name in BODY_NAMES}

    hands = []
    for s in ("L", "R"):
        fingers = {"thumb": "thumb", "index": "f_index", "middle": "f_middle", "ring": "f_ring", "little": "f_pinky"}
        hand: dict[str, SourceSpec] = {"wrist": point(f"hand.{s}")}
        for finger, bone in fingers.items():
            hand[f"{finger}_1"] = point(f"{bone}.01.{s}")
            hand[f"{finger}_2"] = point(f"{bone}.02.{s}")
            hand[f"{finger}_3"] = point(f"{bone}.03.{s}")
            hand[f"{finger}_4"] = point(f"{bone}.03.{s}", "tail")
        hands.append({name: hand[name] for name in HAND_NAMES})
    return body, hands[0], hands[1]


def _rigify_meta() -> ArmaturePreset:
    body, left, right = _rigify(prefixes=("",), face_prefixes=("",))
    return ArmaturePreset(
        "rigify_meta", "Rigify metarig", body, left, right,
        markers=("spine", "spine.001", "spine.002", "spine.003", "spine.005", "shoulder.L", "shoulder.R",
                 "palm.01.L", "palm.01.R", "heel.02.L", "heel.02.R", "toe.L", "toe.R"),
    )


def _rigify_generated() -> ArmaturePreset:
    # Face bones: the deforming and original copies share the metarig's ends; the controls
    # of the same name (a generated rig's "nose.001") do not, so they are never used.
    body, left, right = _rigify(prefixes=("DEF-", "ORG-"), face_prefixes=("DEF-", "ORG-", "MCH-"))
    return ArmaturePreset(
        "rigify_generated", "Rigify generated rig (DEF-/ORG- bones)", body, left, right,
        markers=("root", "torso", "DEF-spine", "DEF-spine.001", "ORG-spine", "MCH-WGT-hips",
                 "upper_arm_fk.L", "upper_arm_ik.L", "thigh_fk.L", "thigh_ik.L", "hand_ik.L", "foot_ik.L"),
    )


def _right_left(stem: str) -> tuple[str, str]:
    """("RightX", "LeftX"): the side naming Mixamo and BVH/CMU skeletons share."""
    return (f"Right{stem}", f"Left{stem}")


def _mixamo() -> ArmaturePreset:
    body = _body(
        _neck("Neck", "RightArm", "LeftArm"), "Head",
        arm={"shoulder": _right_left("Arm"), "elbow": _right_left("ForeArm"), "wrist": _right_left("Hand")},
        leg={"hip": _right_left("UpLeg"), "knee": _right_left("Leg"), "ankle": _right_left("Foot")},
        eyes=("RightEye", "LeftEye"),
    )

    def fingers(s: str) -> dict[str, list[SourceSpec]]:
        out = {}
        for finger, stem in (("thumb", "Thumb"), ("index", "Index"), ("middle", "Middle"), ("ring", "Ring"), ("little", "Pinky")):
            bone = f"{s}Hand{stem}"
            # Mixamo's fourth bone is the end bone (its head is the finger tip).
            out[finger] = [_head(bone + "1"), _head(bone + "2"), _head(bone + "3"), (_head(bone + "4"), _tail(bone + "3"))]
        return out

    return ArmaturePreset(
        "mixamo", "Mixamo", body, _hand("LeftHand", fingers("Left")), _hand("RightHand", fingers("Right")),
        markers=("Hips", "Spine", "Spine1", "Spine2", "HeadTop_End", "LeftShoulder", "RightShoulder",
                 "LeftToeBase", "RightToeBase", "LeftToe_End", "RightToe_End"),
    )


def _bvh_hand(wrist: str, side: str, short: str) -> dict[str, SourceSpec]:
    """A BVH hand: whichever finger joints the file has, by the names BVH exporters use.

    Full chains are named like Mixamo's (<Side>HandThumb1..3, <Side>HandIndex1..3, ...,
    <Side>HandPinky1..3), the usual names of MotionBuilder-style BVH files with fingers.
    CMU's files have one index chain (<Side>FingerBase -> <Side>HandIndex1, whose head is
    the knuckle) and a one-bone thumb (L/RThumb); those are the fallbacks. In Blender a BVH
    joint is a bone whose head is the joint and whose tail is its child (or End Site).
    """
    out: dict[str, SourceSpec] = {"wrist": _head(wrist)}
    for finger, stem in (("thumb", "Thumb"), ("index", "Index"), ("middle", "Middle"), ("ring", "Ring"), ("little", "Pinky")):
        bone = f"{side}Hand{stem}"
        out[f"{finger}_1"] = _head(bone + "1")
        out[f"{finger}_2"] = _head(bone + "2")
        out[f"{finger}_3"] = _head(bone + "3")
        out[f"{finger}_4"] = (_head(bone + "4"), _tail(bone + "3"))
    out["thumb_1"] = (_head(f"{side}HandThumb1"), _head(f"{short}Thumb"))
    out["thumb_4"] = (_head(f"{side}HandThumb4"), _tail(f"{side}HandThumb3"), _tail(f"{short}Thumb"))
    out["index_1"] = (_head(f"{side}HandIndex1"), _tail(f"{side}FingerBase"))
    out["index_4"] = (_head(f"{side}HandIndex4"), _tail(f"{side}HandIndex3"), _tail(f"{side}HandIndex1"))
    return {name: out[name] for name in HAND_NAMES}


def _bvh_cmu() -> ArmaturePreset:
    # The CMU motion-capture library as converted for MotionBuilder (the naming Mixamo also
    # uses for the limbs): <Side>Shoulder is the collar bone, <Side>Arm the upper arm.
    body = _body(
        _neck("Neck", "RightArm", "LeftArm"), "Head",
        arm={"shoulder": _right_left("Arm"), "elbow": _right_left("ForeArm"), "wrist": _right_left("Hand")},
        leg={"hip": _right_left("UpLeg"), "knee": _right_left("Leg"), "ankle": _right_left("Foot")},
    )
    return ArmaturePreset(
        "bvh_cmu", "BVH / CMU mocap (MotionBuilder naming)", body,
        _bvh_hand("LeftHand", "Left", "L"), _bvh_hand("RightHand", "Right", "R"),
        markers=("Hips", "LHipJoint", "RHipJoint", "LowerBack", "Spine", "Spine1", "Neck1",
                 "LeftShoulder", "RightShoulder", "LeftFingerBase", "RightFingerBase", "LeftToeBase"),
    )


def _bvh_cmu_max() -> ArmaturePreset:
    # The CMU library as converted for 3ds Max: joints named for the joint, not the bone.
    # <Side>Collar is the collar bone and <Side>Shoulder the upper arm (starting at the
    # shoulder joint), then <Side>Elbow and <Side>Wrist; <Side>Hip, <Side>Knee, <Side>Ankle.
    body = _body(
        _neck("Neck", "RightShoulder", "LeftShoulder"), "Head",
        arm={"shoulder": _right_left("Shoulder"), "elbow": _right_left("Elbow"), "wrist": _right_left("Wrist")},
        leg={"hip": _right_left("Hip"), "knee": _right_left("Knee"), "ankle": _right_left("Ankle")},
    )
    return ArmaturePreset(
        "bvh_cmu_max", "BVH / CMU mocap (3ds Max naming)", body,
        _bvh_hand("LeftWrist", "Left", "L"), _bvh_hand("RightWrist", "Right", "R"),
        markers=("Hips", "Chest", "Chest2", "Chest3", "Chest4", "LeftCollar", "RightCollar", "LeftToe", "RightToe"),
    )


def _vrm() -> ArmaturePreset:
    # VRoid exports J_Bip_* names; other VRM tools name bones by the humanoid spec (hips, leftUpperArm...).
    def both(vroid: str, humanoid: str, end: str = "head") -> tuple[Source, ...]:
        return (BonePoint(vroid, end), BonePoint(humanoid, end))

    def face_offset(name: str) -> tuple[Source, ...]:
        return (BoneOffset("J_Bip_C_Head", HEAD_OFFSETS[name]), BoneOffset("head", HEAD_OFFSETS[name]))

    body: dict[str, SourceSpec] = {
        "neck": both("J_Bip_C_Neck", "neck") + (BoneMidpoint(_head("J_Bip_R_UpperArm"), _head("J_Bip_L_UpperArm")),),
        "nose": face_offset("nose"),
    }
    for side, S, s in (("right", "R", "right"), ("left", "L", "left")):
        body[f"{side}_shoulder"] = both(f"J_Bip_{S}_UpperArm", f"{s}UpperArm")
        body[f"{side}_elbow"] = both(f"J_Bip_{S}_LowerArm", f"{s}LowerArm")
        body[f"{side}_wrist"] = both(f"J_Bip_{S}_Hand", f"{s}Hand")
        body[f"{side}_hip"] = both(f"J_Bip_{S}_UpperLeg", f"{s}UpperLeg")
        body[f"{side}_knee"] = both(f"J_Bip_{S}_LowerLeg", f"{s}LowerLeg")
        body[f"{side}_ankle"] = both(f"J_Bip_{S}_Foot", f"{s}Foot")
        body[f"{side}_eye"] = both(f"J_Adj_{S}_FaceEye", f"{s}Eye") + face_offset(f"{side}_eye")
        body[f"{side}_ear"] = face_offset(f"{side}_ear")
    body = {name: body[name] for name in BODY_NAMES}

    def hand(S: str, s: str) -> dict[str, SourceSpec]:
        out: dict[str, SourceSpec] = {"wrist": both(f"J_Bip_{S}_Hand", f"{s}Hand")}
        # VRM 1.0 thumb: Metacarpal, Proximal, Distal; VRM 0.x: Proximal, Intermediate, Distal.
        thumb = [
            (BonePoint(f"J_Bip_{S}_Thumb1"), BonePoint(f"{s}ThumbMetacarpal"), BonePoint(f"{s}ThumbProximal")),
            (BonePoint(f"J_Bip_{S}_Thumb2"), BonePoint(f"{s}ThumbProximal"), BonePoint(f"{s}ThumbIntermediate")),
            both(f"J_Bip_{S}_Thumb3", f"{s}ThumbDistal"),
            both(f"J_Bip_{S}_Thumb3", f"{s}ThumbDistal", "tail"),
        ]
        for i, source in enumerate(thumb, start=1):
            out[f"thumb_{i}"] = source
        for finger, vroid, humanoid in (("index", "Index", "Index"), ("middle", "Middle", "Middle"),
                                        ("ring", "Ring", "Ring"), ("little", "Little", "Little")):
            out[f"{finger}_1"] = both(f"J_Bip_{S}_{vroid}1", f"{s}{humanoid}Proximal")
            out[f"{finger}_2"] = both(f"J_Bip_{S}_{vroid}2", f"{s}{humanoid}Intermediate")
            out[f"{finger}_3"] = both(f"J_Bip_{S}_{vroid}3", f"{s}{humanoid}Distal")
            out[f"{finger}_4"] = both(f"J_Bip_{S}_{vroid}3", f"{s}{humanoid}Distal", "tail")
        return {name: out[name] for name in HAND_NAMES}

    return ArmaturePreset(
        "vrm", "VRM humanoid (VRoid J_Bip_ names or humanoid names)", body, hand("L", "left"), hand("R", "right"),
        markers=("J_Bip_C_Hips", "J_Bip_C_Spine", "J_Bip_C_Chest", "J_Bip_C_UpperChest", "J_Bip_L_Shoulder",
                 "J_Bip_R_Shoulder", "J_Bip_L_ToeBase", "hips", "spine", "chest", "upperChest",
                 "leftShoulder", "rightShoulder", "leftToes"),
    )


def _unreal() -> ArmaturePreset:
    body = _body(
        (_head("neck_01"), BoneMidpoint(_head("upperarm_r"), _head("upperarm_l"))), "head",
        arm={"shoulder": ("upperarm_r", "upperarm_l"), "elbow": ("lowerarm_r", "lowerarm_l"), "wrist": ("hand_r", "hand_l")},
        leg={"hip": ("thigh_r", "thigh_l"), "knee": ("calf_r", "calf_l"), "ankle": ("foot_r", "foot_l")},
        eyes=("FACIAL_R_Eye", "FACIAL_L_Eye"),
    )

    def hand(s: str) -> dict[str, SourceSpec]:
        names = {"thumb": "thumb", "index": "index", "middle": "middle", "ring": "ring", "little": "pinky"}
        return _hand(f"hand_{s}", _three_bone_fingers(lambda finger, i: f"{names[finger]}_0{i}_{s}"))

    return ArmaturePreset(
        "unreal_mannequin", "Unreal mannequin (UE4/UE5)", body, hand("l"), hand("r"),
        markers=("root", "pelvis", "spine_01", "spine_02", "spine_03", "clavicle_l", "clavicle_r",
                 "ball_l", "ball_r", "neck_02", "ik_foot_root", "ik_hand_root"),
    )


def _auto_rig_pro() -> ArmaturePreset:
    def both(bone: str, end: str = "head") -> tuple[Source, ...]:
        # Deforming bones first, then the c_ controllers of the same joint.
        return (BonePoint(bone, end), BonePoint("c_" + bone, end))

    body: dict[str, SourceSpec] = {
        "neck": both("neck.x") + (BoneMidpoint(_head("arm_stretch.r"), _head("arm_stretch.l")),),
        "nose": (BoneOffset("head.x", HEAD_OFFSETS["nose"]), BoneOffset("c_head.x", HEAD_OFFSETS["nose"])),
    }
    for side, s in (("right", "r"), ("left", "l")):
        body[f"{side}_shoulder"] = (_head(f"arm_stretch.{s}"), _head(f"c_arm_fk.{s}"))
        body[f"{side}_elbow"] = (_head(f"forearm_stretch.{s}"), _head(f"c_forearm_fk.{s}"))
        body[f"{side}_wrist"] = both(f"hand.{s}")
        body[f"{side}_hip"] = (_head(f"thigh_stretch.{s}"), _head(f"c_thigh_fk.{s}"))
        body[f"{side}_knee"] = (_head(f"leg_stretch.{s}"), _head(f"c_leg_fk.{s}"))
        body[f"{side}_ankle"] = both(f"foot.{s}")
        body[f"{side}_eye"] = (_head(f"c_eye.{s}"),
                               BoneOffset("head.x", HEAD_OFFSETS[f"{side}_eye"]),
                               BoneOffset("c_head.x", HEAD_OFFSETS[f"{side}_eye"]))
        body[f"{side}_ear"] = (BoneOffset("head.x", HEAD_OFFSETS[f"{side}_ear"]),
                               BoneOffset("c_head.x", HEAD_OFFSETS[f"{side}_ear"]))
    body = {name: body[name] for name in BODY_NAMES}

    def hand(s: str) -> dict[str, SourceSpec]:
        out: dict[str, SourceSpec] = {"wrist": both(f"hand.{s}")}
        for finger, stem in (("thumb", "thumb"), ("index", "index"), ("middle", "middle"), ("ring", "ring"), ("little", "pinky")):
            out[f"{finger}_1"] = both(f"{stem}1.{s}")
            out[f"{finger}_2"] = both(f"{stem}2.{s}")
            out[f"{finger}_3"] = both(f"{stem}3.{s}")
            out[f"{finger}_4"] = both(f"{stem}3.{s}", "tail")
        return {name: out[name] for name in HAND_NAMES}

    return ArmaturePreset(
        "auto_rig_pro", "Auto-Rig Pro", body, hand("l"), hand("r"),
        markers=("root.x", "c_root_master.x", "c_traj", "spine_01.x", "spine_02.x", "shoulder.l", "shoulder.r",
                 "c_foot_ik.l", "c_hand_ik.l", "toes_01.l", "c_spine_01.x"),
    )


PRESETS: dict[str, ArmaturePreset] = {
    p.name: p
    for p in (
        _rigify_meta(), _rigify_generated(), _mixamo(), _bvh_cmu(), _bvh_cmu_max(), _vrm(), _unreal(),
        _auto_rig_pro(),
    )
}


# --------------------------------------------------------------------------- matching


# Mixamo's namespace written without its colon: "mixamorigHips", "mixamorig1_Hips".
_MIXAMO_GLUED = re.compile(r"^mixamorig\d*_?(?=[A-Z])")


def _plain(name: str) -> str:
    """A bone name without its namespace prefix ("mixamorig:Hips", "mixamorigHips" -> "Hips")."""
    for sep in (":", "|"):
        name = name.rsplit(sep, 1)[-1]
    return _MIXAMO_GLUED.sub("", name)


class _Resolver:
    """Finds a rig's real name for a preset's bone name: exact, then without prefix, then any case."""

    def __init__(self, bone_names) -> None:
        self.exact = set(bone_names)
        self.plain: dict[str, str] = {}
        self.folded: dict[str, str] = {}
        for name in sorted(self.exact):
            self.plain.setdefault(_plain(name), name)
            self.folded.setdefault(_plain(name).lower(), name)

    def __call__(self, bone: str) -> str | None:
        if bone in self.exact:
            return bone
        return self.plain.get(bone) or self.folded.get(bone.lower())


def _resolve(source: Source, find: _Resolver) -> Source | None:
    if isinstance(source, BoneMidpoint):
        first, second = _resolve(source.first, find), _resolve(source.second, find)
        return BoneMidpoint(first, second) if first and second else None
    real = find(source.bone)
    if real is None:
        return None
    if isinstance(source, BonePoint):
        return BonePoint(real, source.end)
    return BoneOffset(real, source.offset)


def _resolve_spec(spec: SourceSpec, find: _Resolver) -> Source | None:
    for source in spec if isinstance(spec, tuple) else (spec,):
        resolved = _resolve(source, find)
        if resolved is not None:
            return resolved
    return None


def resolve_preset(preset: ArmaturePreset, bone_names) -> PresetMatch:
    """A preset resolved against one rig's bone names, with its unmapped keypoints and score.

    score: the number of keypoints mapped (body counts double: a preset that maps the body
    beats one that maps fingers) plus 0.25 per marker bone found, so that close families
    (Mixamo and CMU share most names) are told apart by their typical extra bones.
    """
    find = _Resolver(bone_names)
    resolved = {}
    unmapped: list[str] = []
    for part, names in (("body", BODY_NAMES), ("left_hand", HAND_NAMES), ("right_hand", HAND_NAMES)):
        table = getattr(preset, part)
        resolved[part] = {}
        for name in names:
            spec = table.get(name)
            source = _resolve_spec(spec, find) if spec is not None else None
            if source is None:
                unmapped.append(name if part == "body" else f"{part}.{name}")
            else:
                resolved[part][name] = source
    markers = sum(1 for m in preset.markers if find(m) is not None)
    score = 2 * len(resolved["body"]) + len(resolved["left_hand"]) + len(resolved["right_hand"]) + 0.25 * markers
    if not resolved["body"]:
        score = 0.25 * markers if markers > 2 else 0.0
    return PresetMatch(preset, resolved["body"], resolved["left_hand"], resolved["right_hand"], unmapped, score)


def match_preset(bone_names) -> PresetMatch | None:
    """The preset that fits a rig best, resolved to its bone names; None if none maps a body point.

    Face points resolve whenever the head bone exists, so a rig counts by what its limbs map.
    Ties go to the earlier preset in PRESETS.
    """
    bone_names = list(bone_names)
    best: PresetMatch | None = None
    for preset in PRESETS.values():
        match = resolve_preset(preset, bone_names)
        if best is None or match.score > best.score:
            best = match
    if best is None or not best.body:
        return None
    return best


# --------------------------------------------------------------------------- evaluating


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else None


def evaluate_source(source: SourceSpec, bones: dict[str, BoneFrame]) -> np.ndarray | None:
    """The 3D point a source gives for the bones' current frames, or None if a bone is missing.

    A tuple of alternatives gives the first that evaluates.
    """
    if isinstance(source, tuple):
        for alternative in source:
            point = evaluate_source(alternative, bones)
            if point is not None:
                return point
        return None
    if isinstance(source, BoneMidpoint):
        a, b = evaluate_source(source.first, bones), evaluate_source(source.second, bones)
        return None if a is None or b is None else (a + b) / 2.0
    frame = bones.get(source.bone)
    if frame is None:
        return None
    head = np.asarray(frame.head, dtype=np.float64)
    tail = np.asarray(frame.tail, dtype=np.float64)
    if isinstance(source, BonePoint):
        return (head if source.end == "head" else tail).copy()
    length = float(np.linalg.norm(tail - head))
    y = _unit(tail - head)
    x = _unit(np.asarray(frame.x_axis, dtype=np.float64))
    z = _unit(np.asarray(frame.z_axis, dtype=np.float64))
    if y is None or x is None or z is None:
        return head.copy()
    ox, oy, oz = source.offset
    return head + length * (ox * x + oy * y + oz * z)
