"""Occlusion on characters as they are built: separate pieces, or one closed skin.

The character is a capsule around every bone of a Mixamo-named rig, in three builds:

- pieces skinned by the armature (one mesh per bone with an Armature modifier and one
  vertex group: how Mixamo's segmented characters come),
- pieces parented to their bones (no modifier: classic rigid-body characters),
- one closed skin (the capsules voxel-remeshed into a single shell, each vertex weighted
  to the capsules it lies on).

The ground truth is geometric and per bone, computed here without ray casting or meshes:
a joint is hidden when the line from the camera to it passes through the capsule of a
bone other than the joint's own (the two bones meeting at it), farther than a small
tolerance from the joint. Poses include an arm swung behind the back, a kick, arms
crossed in front of the chest and a crouch, seen from six cameras around the character.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from mathutils import Matrix, Vector  # noqa: E402

from blender_addon.export import character, projection  # noqa: E402
from pose_bridge.keypoints import BODY_INDEX  # noqa: E402

WIDTH, HEIGHT = 96, 128
# The joint's own flesh: surfaces closer than this to a joint never hide it (metres).
TOLERANCE = 0.05

# (name, head, tail, parent, capsule radius): the character faces -Y, its right is -X.
BONES = [
    ("Hips", (0, 0, 1.0), (0, 0, 1.1), None, 0.13),
    ("Spine", (0, 0, 1.1), (0, 0, 1.22), "Hips", 0.12),
    ("Spine1", (0, 0, 1.22), (0, 0, 1.34), "Spine", 0.13),
    ("Spine2", (0, 0, 1.34), (0, 0, 1.46), "Spine1", 0.13),
    ("Neck", (0, 0, 1.5), (0, 0, 1.6), "Spine2", 0.05),
    ("Head", (0, 0, 1.6), (0, 0, 1.8), "Neck", 0.1),
]
for _s, _x in (("Left", 1.0), ("Right", -1.0)):
    BONES += [
        (f"{_s}Shoulder", (_x * 0.04, 0, 1.42), (_x * 0.17, 0, 1.44), "Spine2", 0.05),
        (f"{_s}Arm", (_x * 0.17, 0, 1.44), (_x * 0.42, 0, 1.44), f"{_s}Shoulder", 0.045),
        (f"{_s}ForeArm", (_x * 0.42, 0, 1.44), (_x * 0.66, 0, 1.44), f"{_s}Arm", 0.04),
        (f"{_s}Hand", (_x * 0.66, 0, 1.44), (_x * 0.76, 0, 1.44), f"{_s}ForeArm", 0.035),
        (f"{_s}UpLeg", (_x * 0.09, 0, 0.98), (_x * 0.09, 0, 0.54), "Hips", 0.07),
        (f"{_s}Leg", (_x * 0.09, 0, 0.54), (_x * 0.09, 0, 0.1), f"{_s}UpLeg", 0.055),
        (f"{_s}Foot", (_x * 0.09, 0, 0.1), (_x * 0.09, -0.12, 0.03), f"{_s}Leg", 0.045),
    ]
RADIUS = {name: r for name, _h, _t, _p, r in BONES}

# Each limb joint: the bone its keypoint is the head of, and the bones meeting there.
JOINTS = {}
for _side, _s in (("left", "Left"), ("right", "Right")):
    JOINTS.update({
        f"{_side}_shoulder": {f"{_s}Shoulder", f"{_s}Arm"},
        f"{_side}_elbow": {f"{_s}Arm", f"{_s}ForeArm"},
        f"{_side}_wrist": {f"{_s}ForeArm", f"{_s}Hand"},
        f"{_side}_hip": {"Hips", f"{_s}UpLeg"},
        f"{_side}_knee": {f"{_s}UpLeg", f"{_s}Leg"},
        f"{_side}_ankle": {f"{_s}Leg", f"{_s}Foot"},
    })
JOINT_BONE = {f"{side}_{j}": f"{s}{b}" for side, s in (("left", "Left"), ("right", "Right"))
              for j, b in (("shoulder", "Arm"), ("elbow", "ForeArm"), ("wrist", "Hand"),
                           ("hip", "UpLeg"), ("knee", "Leg"), ("ankle", "Foot"))}

# Poses: bone -> direction it points to (armature space); bones not named keep their rest direction.
POSES = {
    "t_pose": {},
    "arms_down": {"LeftArm": (0.15, 0, -1), "RightArm": (-0.15, 0, -1)},
    "right_arm_behind_back": {"LeftArm": (0.15, 0, -1), "RightArm": (-0.1, 0.5, -0.85),
                              "RightForeArm": (1.0, 0.12, 0.05), "RightHand": (1.0, 0.0, 0.0)},
    "kick": {"RightUpLeg": (0, -0.95, -0.2), "RightLeg": (0, -0.8, -0.55), "LeftArm": (0.1, -1, -0.2),
             "RightArm": (-0.3, 0.4, -0.85), "Spine1": (0, 0.25, 1)},
    "arms_crossed": {"LeftArm": (0.15, -0.55, -0.8), "LeftForeArm": (-1.0, -0.3, 0.25),
                     "RightArm": (-0.15, -0.7, -0.7), "RightForeArm": (1.0, -0.45, 0.35)},
    "crouch": {"Spine": (0, -0.35, 1), "LeftUpLeg": (0.1, -0.7, -0.7), "RightUpLeg": (-0.1, -0.7, -0.7),
               "LeftLeg": (0, 0.5, -0.85), "RightLeg": (0, 0.5, -0.85), "LeftArm": (0.2, -1, 0),
               "RightArm": (-0.2, -1, 0)},
}
# (yaw, pitch) in degrees, yaw 0 = in front of the character.
CAMERAS = [(0, 5), (90, 10), (-90, 0), (180, 5), (40, 30), (-135, -10)]


# ---------------------------------------------------------------- building the character


def build_rig() -> bpy.types.Object:
    rig = bpy.data.objects.new("Hero", bpy.data.armatures.new("Hero"))
    bpy.context.scene.collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    for name, head, tail, parent, _r in BONES:
        bone = rig.data.edit_bones.new(name)
        bone.head, bone.tail = head, tail
        if parent:
            bone.parent = rig.data.edit_bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    return rig


def capsule(head, tail, radius, segments: int = 16, rings: int = 4):
    """Vertices and quads/triangles of a closed capsule around the segment head-tail."""
    head, tail = Vector(head), Vector(tail)
    w = (tail - head).normalized()
    u = w.orthogonal().normalized()
    v = w.cross(u)
    circles = []  # (centre, offset along w, ring radius), from the bottom pole to the top pole
    for i in range(1, rings + 1):
        theta = math.pi / 2 * i / rings
        circles.append((head - w * radius * math.cos(theta), radius * math.sin(theta)))
    for i in range(rings, 0, -1):
        theta = math.pi / 2 * i / rings
        circles.append((tail + w * radius * math.cos(theta), radius * math.sin(theta)))
    verts = [head - w * radius]
    for centre, r in circles:
        for k in range(segments):
            a = 2 * math.pi * k / segments
            verts.append(centre + r * (math.cos(a) * u + math.sin(a) * v))
    verts.append(tail + w * radius)
    top = len(verts) - 1
    faces = [(0, 1 + (k + 1) % segments, 1 + k) for k in range(segments)]
    for c in range(len(circles) - 1):
        a0, b0 = 1 + c * segments, 1 + (c + 1) * segments
        faces += [(a0 + k, a0 + (k + 1) % segments, b0 + (k + 1) % segments, b0 + k) for k in range(segments)]
    last = 1 + (len(circles) - 1) * segments
    faces += [(last + k, last + (k + 1) % segments, top) for k in range(segments)]
    return [tuple(p) for p in verts], faces


def mesh_object(name, verts, faces):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], faces)
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def skin(obj, rig) -> None:
    obj.modifiers.new("Armature", "ARMATURE").object = rig
    obj.parent = rig


def build_pieces(rig, parented: bool) -> None:
    for name, head, tail, _p, radius in BONES:
        obj = mesh_object(f"Piece {name}", *capsule(head, tail, radius))
        if parented:
            # Bone parenting places the child at the bone's tail: undo that for the rest pose.
            bone = rig.data.bones[name]
            obj.parent, obj.parent_type, obj.parent_bone = rig, "BONE", name
            at_tail = rig.matrix_world @ bone.matrix_local @ Matrix.Translation((0.0, bone.length, 0.0))
            obj.matrix_parent_inverse = at_tail.inverted()
        else:
            obj.vertex_groups.new(name=name).add(list(range(len(obj.data.vertices))), 1.0, "REPLACE")
            skin(obj, rig)


def segment_distances(points: np.ndarray, head: np.ndarray, tail: np.ndarray) -> np.ndarray:
    axis = tail - head
    t = np.clip(((points - head) @ axis) / max(float(axis @ axis), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (head + t[:, None] * axis), axis=1)


def build_single_shell(rig) -> None:
    verts, faces = [], []
    for _name, head, tail, _p, radius in BONES:
        v, f = capsule(head, tail, radius)
        faces += [tuple(i + len(verts) for i in face) for face in f]
        verts += v
    union = mesh_object("Capsules", verts, faces)
    remesh = union.modifiers.new("Remesh", "REMESH")
    remesh.mode, remesh.voxel_size = "VOXEL", 0.02
    shell_mesh = bpy.data.meshes.new_from_object(union.evaluated_get(bpy.context.evaluated_depsgraph_get()))
    bpy.data.objects.remove(union)
    shell = bpy.data.objects.new("Skin", shell_mesh)
    bpy.context.scene.collection.objects.link(shell)
    # Weights: each vertex to the capsules it lies on, blended over 3 cm where capsules meet.
    coords = np.array([v.co for v in shell_mesh.vertices])
    depth = np.stack([segment_distances(coords, np.array(h), np.array(t)) - r for _n, h, t, _p, r in BONES], axis=1)
    weights = np.clip(1.0 - (depth - depth.min(axis=1, keepdims=True)) / 0.03, 0.0, 1.0)
    for b, (name, *_rest) in enumerate(BONES):
        group = shell.vertex_groups.new(name=name)
        for index in np.nonzero(weights[:, b] > 0)[0]:
            group.add([int(index)], float(weights[index, b]), "REPLACE")
    skin(shell, rig)


def pose_rig(rig) -> list[int]:
    """One frame per POSES entry: each named bone turned to point along its direction."""
    bpy.context.view_layer.objects.active = rig
    frames = []
    for frame, directions in enumerate(POSES.values(), start=1):
        for pose_bone in rig.pose.bones:
            pose_bone.rotation_mode = "QUATERNION"
            pose_bone.matrix_basis = Matrix.Identity(4)
        bpy.context.view_layer.update()
        for name, _h, _t, _p, _r in BONES:  # parents before children
            if name in directions:
                pose_bone = rig.pose.bones[name]
                current = pose_bone.matrix.copy()
                turn = (pose_bone.tail - pose_bone.head).rotation_difference(Vector(directions[name]))
                turned = turn.to_matrix() @ current.to_3x3()
                pose_bone.matrix = Matrix.Translation(current.translation) @ turned.to_4x4()
                bpy.context.view_layer.update()
        for pose_bone in rig.pose.bones:
            pose_bone.keyframe_insert("rotation_quaternion", frame=frame)
            pose_bone.keyframe_insert("location", frame=frame)
        frames.append(frame)
    return frames


def make_camera(yaw_deg: float, pitch_deg: float) -> bpy.types.Object:
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    target = Vector((0.0, 0.0, 0.95))
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    camera.location = target + 4.6 * Vector((math.sin(yaw) * math.cos(pitch), -math.cos(yaw) * math.cos(pitch),
                                             math.sin(pitch)))
    camera.rotation_euler = (target - camera.location).to_track_quat("-Z", "Y").to_euler()
    bpy.context.scene.collection.objects.link(camera)
    bpy.context.scene.camera = camera
    return camera


# ---------------------------------------------------------------- the ground truth


def hidden_by_bones(rig, camera_location: Vector, joint: str) -> bool:
    """Does the line from the camera to the joint pass through a capsule not its own?"""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    rig_eval = rig.evaluated_get(depsgraph)
    bones = {pb.name: (np.array(rig.matrix_world @ pb.head), np.array(rig.matrix_world @ pb.tail))
             for pb in rig_eval.pose.bones}
    point = bones[JOINT_BONE[joint]][0]
    eye = np.array(camera_location)
    stop = point + (eye - point) / np.linalg.norm(eye - point) * TOLERANCE
    samples = eye + np.linspace(0.0, 1.0, 2000)[:, None] * (stop - eye)
    for name, (head, tail) in bones.items():
        if name not in JOINTS[joint] and (segment_distances(samples, head, tail) < RADIUS[name]).any():
            return True
    return False


@pytest.fixture(autouse=True)
def empty_file():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


@pytest.mark.parametrize("build", ["pieces_skinned", "pieces_parented", "single_shell"])
def test_occlusion_agrees_with_a_per_bone_ground_truth(build):
    scene = bpy.context.scene
    rig = build_rig()
    if build == "single_shell":
        build_single_shell(rig)
    else:
        build_pieces(rig, parented=build == "pieces_parented")
    frames = pose_rig(rig)
    assert len(character.character_meshes(scene, rig)) == (1 if build == "single_shell" else len(BONES))

    agree = total = truly_hidden = 0
    disagreements = []
    behind_back = frames[list(POSES).index("right_arm_behind_back")]
    for yaw, pitch in CAMERAS:
        camera = make_camera(yaw, pitch)
        seen = projection.project_sequence(scene, rig, camera, frames[0], frames[-1], WIDTH, HEIGHT)
        result = projection.project_sequence(scene, rig, camera, frames[0], frames[-1], WIDTH, HEIGHT, occlusion=True)
        for i, frame in enumerate(frames):
            scene.frame_set(frame)
            location = camera.matrix_world.translation
            for joint in JOINTS:
                index = BODY_INDEX[joint]
                assert seen.poses[i].body[index, 2] == 1, (yaw, frame, joint)  # in the frame
                truth = hidden_by_bones(rig, location, joint)
                hidden = result.poses[i].body[index, 2] == 0
                total += 1
                truly_hidden += truth
                if hidden == truth:
                    agree += 1
                else:
                    disagreements.append((yaw, pitch, list(POSES)[i], joint, "hidden" if hidden else "shown"))
                if (yaw, frame) == (0, behind_back) and joint == "right_wrist":
                    assert truth and hidden  # the hand behind the back, seen from the front
        bpy.data.objects.remove(camera)
    # The test means something: many joints are hidden, most are not.
    assert 0.1 * total < truly_hidden < 0.6 * total, truly_hidden
    assert agree >= 0.95 * total, f"{agree}/{total} agree; wrong: {disagreements}"
