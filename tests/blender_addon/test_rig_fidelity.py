"""Skeletons from the rigs animators have, drawn the way the released weights saw them.

For a Rigify-generated rig (made by Rigify itself, which ships with Blender), CMU motion
capture in both public BVH namings (files written here and read with Blender's own BVH
importer) and Mixamo-named rigs, every visible body keypoint must lie within 1% of the
frame height of an independent projection: the bones a keypoint should come from are
named here, per family, not taken from pose_bridge's presets, and projected with the
camera's projection matrix (not world_to_camera_view, which the add-on uses). The neck is
DWPose's: the mean of the two projected shoulders. Auto-detection must pick each family.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from mathutils import Euler, Vector  # noqa: E402

from blender_addon.errors import AddonError  # noqa: E402
from blender_addon.export import projection, rig_mapping  # noqa: E402
from pose_bridge import bone_presets  # noqa: E402
from pose_bridge.keypoints import BODY_INDEX, BODY_NAMES, HAND_NAMES  # noqa: E402

WIDTH, HEIGHT = 96, 128
TOLERANCE = 0.01 * HEIGHT  # 1% of the frame height
SIDES = (("right", "R", "Right"), ("left", "L", "Left"))


# ---------------------------------------------------------------- the independent projection


def independent_pixel(camera, world: Vector) -> tuple[float, float] | None:
    """(x, y) in pixels from the camera's projection matrix; None behind the camera."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    camera_eval = camera.evaluated_get(depsgraph)
    matrix = camera_eval.calc_matrix_camera(depsgraph, x=WIDTH, y=HEIGHT, scale_x=1.0, scale_y=1.0)
    in_view = camera_eval.matrix_world.normalized().inverted() @ world
    if in_view.z >= 0.0:  # cameras look down -Z
        return None
    clip = matrix @ in_view.to_4d()
    return (clip.x / clip.w + 1.0) / 2.0 * WIDTH, (1.0 - clip.y / clip.w) / 2.0 * HEIGHT


def bone_end(rig, bone: str, end: str = "head") -> Vector:
    pose_bone = rig.evaluated_get(bpy.context.evaluated_depsgraph_get()).pose.bones[bone]
    return rig.matrix_world @ (pose_bone.head if end == "head" else pose_bone.tail)


def head_offset(rig, bone: str, offset) -> Vector:
    """A point fixed to a bone, in bone lengths along its own X, Y (head to tail), Z axes."""
    pose_bone = rig.evaluated_get(bpy.context.evaluated_depsgraph_get()).pose.bones[bone]
    matrix = rig.matrix_world @ pose_bone.matrix
    x, y, z = (matrix.col[i].xyz.normalized() for i in range(3))
    length = (rig.matrix_world @ pose_bone.tail - matrix.translation).length
    return matrix.translation + length * (offset[0] * x + offset[1] * y + offset[2] * z)


def expected_body(rig, camera, points) -> dict[str, tuple[float, float] | None]:
    """Pixels of the body keypoints from `points` (name -> world point), neck by DWPose's rule."""
    pixels = {}
    for name, world in points.items():
        pixel = independent_pixel(camera, world)
        inside = pixel is not None and 0 <= pixel[0] <= WIDTH and 0 <= pixel[1] <= HEIGHT
        pixels[name] = pixel if inside else None
    right, left = pixels["right_shoulder"], pixels["left_shoulder"]
    pixels["neck"] = None if right is None or left is None else ((right[0] + left[0]) / 2, (right[1] + left[1]) / 2)
    return pixels


def assert_body_matches(result, rig, camera, frames, where) -> int:
    """Every frame's body keypoints against `where(rig) -> {name: world point}`; returns points compared."""
    compared = 0
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = WIDTH, HEIGHT
    for i, frame in enumerate(frames):
        scene.frame_set(frame)
        expected = expected_body(rig, camera, where(rig))
        body = result.poses[i].body
        for name in BODY_NAMES:
            x, y, confidence = body[BODY_INDEX[name]]
            if expected[name] is None:
                assert confidence == 0, (frame, name)
                continue
            assert confidence == 1, (frame, name)
            error = math.dist((x, y), expected[name])
            assert error <= TOLERANCE, f"frame {frame} {name}: {error:.2f} px from the bones' projection"
            compared += 1
    return compared


def make_camera(target: Vector, distance: float, yaw_deg: float, pitch_deg: float = 5.0):
    """A perspective camera looking at target from the front (-Y), turned by yaw about Z."""
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    camera.location = target + distance * Vector((math.sin(yaw) * math.cos(pitch), -math.cos(yaw) * math.cos(pitch),
                                                 math.sin(pitch)))
    camera.rotation_euler = (target - camera.location).to_track_quat("-Z", "Y").to_euler()
    bpy.context.scene.collection.objects.link(camera)
    bpy.context.scene.camera = camera
    return camera


def rig_centre_and_height(rig) -> tuple[Vector, float]:
    points = [rig.matrix_world @ b.head_local for b in rig.data.bones] + [rig.matrix_world @ b.tail_local
                                                                          for b in rig.data.bones]
    low = Vector([min(p[i] for p in points) for i in range(3)])
    high = Vector([max(p[i] for p in points) for i in range(3)])
    return (low + high) / 2, high.z - low.z


def frame_the_rig(rig, yaw_deg: float = 20.0):
    centre, height = rig_centre_and_height(rig)
    return make_camera(centre, 2.2 * height, yaw_deg)


def project(rig, camera, frames, **kwargs):
    scene = bpy.context.scene
    return projection.project_sequence(scene, rig, camera, frames[0], frames[-1], WIDTH, HEIGHT, **kwargs)


@pytest.fixture(autouse=True)
def empty_file():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


# ---------------------------------------------------------------- Rigify

# Once Rigify has been enabled, the bpy 4.2 module crashes as its Python process exits, after
# every test has passed. So the Rigify tests run in a child pytest that leaves with os._exit.
RIGIFY_CHILD = "ANIMATE_TEST_RIGIFY_CHILD"
in_rigify_child = pytest.mark.skipif(
    os.environ.get(RIGIFY_CHILD) != "1", reason="run in a child process by test_rigify_rigs_in_a_child_process"
)


def test_rigify_rigs_in_a_child_process(tmp_path):
    code = "import os, sys, pytest; rc = pytest.main(sys.argv[1:]); sys.stdout.flush(); os._exit(int(rc))"
    tests = [f"{__file__}::test_rigify_generated_rig", f"{__file__}::test_rigify_metarig"]
    proc = subprocess.run(
        [sys.executable, "-c", code, "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "child"), *tests],
        env={**os.environ, RIGIFY_CHILD: "1"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "2 passed" in proc.stdout


def rigify_generated_rig(tmp_path_factory) -> bpy.types.Object:
    """A rig generated by Rigify from its human metarig (saved once, reloaded per test)."""
    path = tmp_path_factory.getbasetemp() / "rigify_generated.blend"
    if not path.exists():
        bpy.ops.wm.read_factory_settings(use_empty=True)
        try:
            bpy.ops.preferences.addon_enable(module="rigify")
        except RuntimeError as exc:  # pragma: no cover - Rigify ships with every bpy this project supports
            pytest.fail(f"Rigify cannot be enabled in this bpy ({exc})")
        bpy.ops.object.armature_human_metarig_add()
        metarig = bpy.context.object
        bpy.ops.pose.rigify_generate()
        bpy.data.objects.remove(metarig)
        bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    return next(obj for obj in bpy.data.objects if obj.type == "ARMATURE")


def rigify_points(prefix: str, face_prefix: str):
    """Rigify's keypoints by its anatomy: the nose tip is the tail of nose.001, not the head of nose."""

    def where(rig):
        points = {"nose": bone_end(rig, f"{face_prefix}nose.001", "tail")}
        for side, s, _ in SIDES:
            points[f"{side}_shoulder"] = bone_end(rig, f"{prefix}upper_arm.{s}")
            points[f"{side}_elbow"] = bone_end(rig, f"{prefix}forearm.{s}")
            points[f"{side}_wrist"] = bone_end(rig, f"{prefix}hand.{s}")
            points[f"{side}_hip"] = bone_end(rig, f"{prefix}thigh.{s}")
            points[f"{side}_knee"] = bone_end(rig, f"{prefix}shin.{s}")
            points[f"{side}_ankle"] = bone_end(rig, f"{prefix}foot.{s}")
            points[f"{side}_eye"] = bone_end(rig, f"{face_prefix}eye.{s}")
            points[f"{side}_ear"] = bone_end(rig, f"{face_prefix}ear.{s}")
        return points

    return where


def pose_rigify(rig, frames) -> None:
    """Turn the torso, bend an arm and a leg and nod, through the controls an animator uses."""
    moves = {"torso": ("rotation_euler", (0.0, 0.0, 0.5)), "chest": ("rotation_euler", (0.2, 0.0, 0.3)),
             "head": ("rotation_euler", (0.3, 0.2, 0.0)), "upper_arm_fk.L": ("rotation_euler", (0.6, 0.0, 0.8)),
             "forearm_fk.L": ("rotation_euler", (0.9, 0.0, 0.0)), "thigh_fk.R": ("rotation_euler", (-0.8, 0.0, 0.0)),
             "hand_ik.R": ("location", (0.05, -0.2, 0.25)), "foot_ik.L": ("location", (0.0, -0.15, 0.2))}
    for name, (path, value) in moves.items():
        pose_bone = rig.pose.bones[name]
        pose_bone.rotation_mode = "XYZ"
        for i, frame in enumerate(frames):
            setattr(pose_bone, path, [v * i / (len(frames) - 1) for v in value])
            pose_bone.keyframe_insert(path, frame=frame)


@in_rigify_child
def test_rigify_generated_rig(tmp_path_factory):
    rig = rigify_generated_rig(tmp_path_factory)
    assert rig_mapping.resolve_mapping(rig).preset == "rigify_generated"
    frames = [1, 2, 3]
    pose_rigify(rig, frames)
    camera = frame_the_rig(rig, yaw_deg=25)
    result = project(rig, camera, frames)
    assert result.mapping.preset == "rigify_generated"
    compared = assert_body_matches(result, rig, camera, frames, rigify_points("DEF-", "ORG-"))
    assert compared >= 17 * len(frames)
    # The generated rig's control "nose.001" has another tail; the tip comes from the deforming copy.
    assert result.mapping.body["nose"] == bone_presets.BonePoint("DEF-nose.001", "tail")
    # The nose tip sits below the eyes (the head of "nose" sat above them).
    body = result.poses[0].body
    assert body[BODY_INDEX["nose"], 1] > body[BODY_INDEX["right_eye"], 1]


@in_rigify_child
def test_rigify_metarig():
    bpy.ops.preferences.addon_enable(module="rigify")
    bpy.ops.object.armature_human_metarig_add()
    rig = bpy.context.object
    assert rig_mapping.resolve_mapping(rig).preset == "rigify_meta"
    for frame, angle in ((1, 0.0), (2, 0.7)):
        rig.pose.bones["upper_arm.R"].rotation_mode = "XYZ"
        rig.pose.bones["upper_arm.R"].rotation_euler = (angle, 0.0, angle)
        rig.pose.bones["upper_arm.R"].keyframe_insert("rotation_euler", frame=frame)
    camera = frame_the_rig(rig, yaw_deg=-15)
    result = project(rig, camera, [1, 2])
    assert assert_body_matches(result, rig, camera, [1, 2], rigify_points("", "")) == 2 * 18


# ---------------------------------------------------------------- CMU BVH, both namings

# Joint tree as (name, offset in cm, BVH Y up, the character facing +Z; children).
def _arm(side: str, x: float, names: tuple[str, ...], thumb: str | None, fingers: tuple[str, ...]):
    """An arm chain from the collar outwards; names = (collar, upper arm, forearm, hand)."""
    collar, upper, fore, hand = names
    hand_children = []
    if fingers:  # CMU: <Side>FingerBase -> <Side>HandIndex1 (one chain for the fingers)
        hand_children.append((fingers[0], (x * 2.5, 0.0, 0.0), [(fingers[1], (x * 3.0, 0.0, 0.0), [])]))
    if thumb:
        hand_children.append((thumb, (x * 1.5, 0.0, 2.5), []))
    return (collar, (x * 3.0, 20.0, 0.0), [
        (upper, (x * 15.0, 0.0, 0.0), [
            (fore, (x * 28.0, 0.0, 0.0), [
                (hand, (x * 24.0, 0.0, 0.0), hand_children)])])])


def _leg(x: float, names: tuple[str, ...]):
    """A leg from the pelvis down; names = (hip joint bone or None, thigh, shin, foot, toe)."""
    hip, thigh, shin, foot, toe = names
    chain = (thigh, (0.0, 0.0, 0.0) if hip else (x * 9.0, -2.0, 0.0), [
        (shin, (0.0, -43.0, 0.0), [
            (foot, (0.0, -42.0, 0.0), [
                (toe, (0.0, -6.0, 14.0), [])])])])
    if hip:  # CMU's LHipJoint runs from the pelvis centre to the hip joint
        thigh_name, _offset, children = chain
        return (hip, (0.0, 0.0, 0.0), [(thigh_name, (x * 9.0, -2.0, 0.0), children)])
    return chain


CMU_MOTIONBUILDER = ("Hips", (0.0, 95.0, 0.0), [
    _leg(1.0, ("LHipJoint", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase")),
    _leg(-1.0, ("RHipJoint", "RightUpLeg", "RightLeg", "RightFoot", "RightToeBase")),
    ("LowerBack", (0.0, 2.0, 0.0), [
        ("Spine", (0.0, 12.0, 0.0), [
            ("Spine1", (0.0, 12.0, 0.0), [
                ("Neck", (0.0, 24.0, 0.0), [
                    ("Neck1", (0.0, 5.0, 0.0), [("Head", (0.0, 5.0, 1.0), [])])]),
                _arm("Left", 1.0, ("LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand"), "LThumb",
                     ("LeftFingerBase", "LeftHandIndex1")),
                _arm("Right", -1.0, ("RightShoulder", "RightArm", "RightForeArm", "RightHand"), "RThumb",
                     ("RightFingerBase", "RightHandIndex1"))])])])])

CMU_3DSMAX = ("Hips", (0.0, 95.0, 0.0), [
    _leg(1.0, (None, "LeftHip", "LeftKnee", "LeftAnkle", "LeftToe")),
    _leg(-1.0, (None, "RightHip", "RightKnee", "RightAnkle", "RightToe")),
    ("Chest", (0.0, 10.0, 0.0), [
        ("Chest2", (0.0, 11.0, 0.0), [
            ("Chest3", (0.0, 10.0, 0.0), [
                ("Chest4", (0.0, 6.0, 0.0), [
                    ("Neck", (0.0, 8.0, 0.0), [("Head", (0.0, 9.0, 1.0), [])]),
                    _arm("Left", 1.0, ("LeftCollar", "LeftShoulder", "LeftElbow", "LeftWrist"), None, ()),
                    _arm("Right", -1.0, ("RightCollar", "RightShoulder", "RightElbow", "RightWrist"), None, ()),
                ])])])])])

# Rotations per frame (degrees, Z X Y order as CMU writes them) of the joints that move.
BVH_MOTION = {
    "Hips": (0.0, 0.0, 25.0), "LeftArm": (-50.0, 20.0, 0.0), "LeftShoulder": (-50.0, 20.0, 0.0),
    "RightForeArm": (0.0, 0.0, 70.0), "RightElbow": (0.0, 0.0, 70.0), "LeftUpLeg": (0.0, -60.0, 0.0),
    "LeftHip": (0.0, -60.0, 0.0), "RightLeg": (0.0, 45.0, 0.0), "RightKnee": (0.0, 45.0, 0.0),
    "Neck": (0.0, 15.0, 20.0), "Head": (10.0, -10.0, 0.0),
}


def write_bvh(path, root, frames: int = 3, motion=BVH_MOTION) -> None:
    """A BVH file of the joint tree, with `motion` ramping from rest to full over the frames."""
    lines = ["HIERARCHY"]
    order: list[str] = []

    def joint(node, depth: int) -> None:
        name, offset, children = node
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {name}")
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {offset[0]:.4f} {offset[1]:.4f} {offset[2]:.4f}")
        if depth == 0:
            lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation")
        else:
            lines.append(f"{pad}  CHANNELS 3 Zrotation Xrotation Yrotation")
        order.append(name)
        for child in children:
            joint(child, depth + 1)
        if not children:
            end = Vector(offset).normalized() * 4.0 if Vector(offset).length else Vector((0.0, 4.0, 0.0))
            lines.extend([f"{pad}  End Site", pad + "  {", f"{pad}    OFFSET {end.x:.4f} {end.y:.4f} {end.z:.4f}",
                          pad + "  }"])
        lines.append(pad + "}")

    joint(root, 0)
    lines += ["MOTION", f"Frames: {frames}", "Frame Time: 0.041667"]
    for f in range(frames):
        t = f / max(1, frames - 1)
        values = [3.0 * t, root[1][1], -5.0 * t]
        for name in order:
            values += [a * t for a in motion.get(name, (0.0, 0.0, 0.0))]
        lines.append(" ".join(f"{v:.4f}" for v in values))
    path.write_text("\n".join(lines) + "\n")


def import_bvh(path) -> bpy.types.Object:
    bpy.ops.import_anim.bvh(filepath=str(path), global_scale=0.01, frame_start=1, use_fps_scale=False,
                            update_scene_duration=True)
    return next(obj for obj in bpy.data.objects if obj.type == "ARMATURE")


def face_from_head(rig, points, head: str):
    for name, offset in bone_presets.HEAD_OFFSETS.items():
        points[name] = head_offset(rig, head, offset)
    return points


def cmu_motionbuilder_points(rig):
    points = {}
    for side, _, Side in SIDES:
        points[f"{side}_shoulder"] = bone_end(rig, f"{Side}Arm")
        points[f"{side}_elbow"] = bone_end(rig, f"{Side}ForeArm")
        points[f"{side}_wrist"] = bone_end(rig, f"{Side}Hand")
        points[f"{side}_hip"] = bone_end(rig, f"{Side}UpLeg")
        points[f"{side}_knee"] = bone_end(rig, f"{Side}Leg")
        points[f"{side}_ankle"] = bone_end(rig, f"{Side}Foot")
    return face_from_head(rig, points, "Head")


def cmu_3dsmax_points(rig):
    # In this naming a joint names the joint: <Side>Shoulder starts at the shoulder.
    points = {}
    for side, _, Side in SIDES:
        for joint, bone in (("shoulder", "Shoulder"), ("elbow", "Elbow"), ("wrist", "Wrist"),
                            ("hip", "Hip"), ("knee", "Knee"), ("ankle", "Ankle")):
            points[f"{side}_{joint}"] = bone_end(rig, f"{Side}{bone}")
    return face_from_head(rig, points, "Head")


@pytest.mark.parametrize("naming, tree, preset, where", [
    ("motionbuilder", CMU_MOTIONBUILDER, "bvh_cmu", cmu_motionbuilder_points),
    ("3dsmax", CMU_3DSMAX, "bvh_cmu_max", cmu_3dsmax_points),
])
def test_cmu_bvh_in_each_naming(tmp_path, naming, tree, preset, where):
    path = tmp_path / f"cmu_{naming}.bvh"
    write_bvh(path, tree)
    rig = import_bvh(path)
    assert rig_mapping.resolve_mapping(rig).preset == preset
    frames = [1, 2, 3]
    camera = frame_the_rig(rig, yaw_deg=30)
    result = project(rig, camera, frames)
    assert result.mapping.preset == preset
    assert assert_body_matches(result, rig, camera, frames, where) >= 17 * len(frames)
    if naming == "motionbuilder":
        # CMU's hands: the thumb and the one index chain are mapped where the file has them.
        scene = bpy.context.scene
        scene.frame_set(3)
        hand = result.poses[2].left_hand
        for name, bone, end in (("wrist", "LeftHand", "head"), ("thumb_1", "LThumb", "head"),
                                ("thumb_4", "LThumb", "tail"), ("index_1", "LeftHandIndex1", "head"),
                                ("index_4", "LeftHandIndex1", "tail")):
            expected = independent_pixel(camera, bone_end(rig, bone, end))
            assert math.dist(hand[HAND_NAMES.index(name), :2], expected) <= TOLERANCE, name
        assert hand[HAND_NAMES.index("middle_1"), 2] == 0  # no such joint in the file: not drawn


# ---------------------------------------------------------------- Mixamo

# (name, head, tail, parent): a Mixamo character, facing -Y, in metres.
MIXAMO = [
    ("Hips", (0, 0, 1.0), (0, 0, 1.1), None),
    ("Spine", (0, 0, 1.1), (0, 0, 1.22), "Hips"), ("Spine1", (0, 0, 1.22), (0, 0, 1.34), "Spine"),
    ("Spine2", (0, 0, 1.34), (0, 0, 1.46), "Spine1"), ("Neck", (0, 0, 1.52), (0, 0, 1.6), "Spine2"),
    ("Head", (0, 0, 1.6), (0, 0, 1.8), "Neck"), ("HeadTop_End", (0, 0, 1.8), (0, 0, 1.85), "Head"),
    ("LeftEye", (0.03, -0.08, 1.68), (0.03, -0.1, 1.68), "Head"),
    ("RightEye", (-0.03, -0.08, 1.68), (-0.03, -0.1, 1.68), "Head"),
]
for _s, _x in (("Left", 1.0), ("Right", -1.0)):
    MIXAMO += [
        (f"{_s}Shoulder", (_x * 0.05, 0, 1.42), (_x * 0.17, 0, 1.44), "Spine2"),
        (f"{_s}Arm", (_x * 0.17, 0, 1.44), (_x * 0.42, 0, 1.42), f"{_s}Shoulder"),
        (f"{_s}ForeArm", (_x * 0.42, 0, 1.42), (_x * 0.66, 0, 1.42), f"{_s}Arm"),
        (f"{_s}Hand", (_x * 0.66, 0, 1.42), (_x * 0.74, 0, 1.42), f"{_s}ForeArm"),
        (f"{_s}UpLeg", (_x * 0.09, 0, 0.98), (_x * 0.09, 0, 0.55), "Hips"),
        (f"{_s}Leg", (_x * 0.09, 0, 0.55), (_x * 0.09, 0.02, 0.1), f"{_s}UpLeg"),
        (f"{_s}Foot", (_x * 0.09, 0.02, 0.1), (_x * 0.09, -0.1, 0.03), f"{_s}Leg"),
        (f"{_s}ToeBase", (_x * 0.09, -0.1, 0.03), (_x * 0.09, -0.17, 0.03), f"{_s}Foot"),
    ]


def build_rig(prefix: str, bones=MIXAMO) -> bpy.types.Object:
    rig = bpy.data.objects.new("Armature", bpy.data.armatures.new("Armature"))
    bpy.context.scene.collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    for name, head, tail, parent in bones:
        bone = rig.data.edit_bones.new(prefix + name)
        bone.head, bone.tail = head, tail
        if parent:
            bone.parent = rig.data.edit_bones[prefix + parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    return rig


def kick(rig, prefix: str, frames) -> None:
    """A front kick: thigh up, knee straightening, arms swinging, the body leaning back."""
    moves = {"RightUpLeg": (-1.4, 0.0, 0.0), "RightLeg": (0.5, 0.0, 0.0), "LeftArm": (0.0, 0.6, -1.0),
             "RightArm": (0.3, 0.0, 0.9), "Spine1": (0.25, 0.0, 0.2), "Head": (0.2, 0.3, 0.0)}
    for name, angles in moves.items():
        pose_bone = rig.pose.bones[prefix + name]
        pose_bone.rotation_mode = "XYZ"
        for i, frame in enumerate(frames):
            pose_bone.rotation_euler = Euler([a * i / (len(frames) - 1) for a in angles])
            pose_bone.keyframe_insert("rotation_euler", frame=frame)


@pytest.mark.parametrize("prefix", ["mixamorig:", "mixamorig1:", "mixamorig", "mixamorig_"])
def test_mixamo_rig(prefix):
    rig = build_rig(prefix)
    rig.location, rig.rotation_euler = (0.3, 0.5, 0.0), (0.0, 0.0, 0.4)
    assert rig_mapping.resolve_mapping(rig).preset == "mixamo"
    frames = [1, 2, 3]
    kick(rig, prefix, frames)
    camera = frame_the_rig(rig, yaw_deg=10)

    def where(rig):
        points = {}
        for side, _, Side in SIDES:
            for joint, bone in (("shoulder", "Arm"), ("elbow", "ForeArm"), ("wrist", "Hand"),
                                ("hip", "UpLeg"), ("knee", "Leg"), ("ankle", "Foot")):
                points[f"{side}_{joint}"] = bone_end(rig, f"{prefix}{Side}{bone}")
            points[f"{side}_eye"] = bone_end(rig, f"{prefix}{Side}Eye")
        for name in ("nose", "right_ear", "left_ear"):
            points[name] = head_offset(rig, prefix + "Head", bone_presets.HEAD_OFFSETS[name])
        return points

    result = project(rig, camera, frames)
    assert assert_body_matches(result, rig, camera, frames, where) >= 17 * len(frames)


def test_the_rigs_own_neck_bone_is_an_option():
    rig = build_rig("mixamorig:")
    camera = frame_the_rig(rig, yaw_deg=0)
    shoulders = project(rig, camera, [1])
    bone = project(rig, camera, [1], neck="bone")
    assert shoulders.mapping.body["neck"] == bone.mapping.body["neck"] == bone_presets.BonePoint("mixamorig:Neck")
    scene = bpy.context.scene
    scene.frame_set(1)
    neck_bone = independent_pixel(camera, bone_end(rig, "mixamorig:Neck"))
    np.testing.assert_allclose(bone.poses[0].body[BODY_INDEX["neck"], :2], neck_bone, atol=1e-3)
    # The shoulders' mean sits lower on this rig, where DWPose would put it: on the shoulder line.
    neck = shoulders.poses[0].body[BODY_INDEX["neck"]]
    line = shoulders.poses[0].body[[BODY_INDEX["right_shoulder"], BODY_INDEX["left_shoulder"]], 1].mean()
    assert neck[2] == 1 and abs(neck[1] - line) < 1e-3 and neck[1] - neck_bone[1] > 1.0
    with pytest.raises(AddonError, match="unknown neck rule"):
        project(rig, camera, [1], neck="chin")
