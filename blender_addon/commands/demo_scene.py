"""A small demo shot built from code: a rigged character that walks in place and waves.

    scene = build_demo_scene()       # in the current (emptied) file

The character is what the add-on expects from a real one, only simpler:
- an armature with the bone names of Rigify's human metarig (spine ... spine.006,
  upper_arm.L, forearm.L, hand.L, f_index.01.L ..., thigh.L, shin.L, foot.L, toe.L), so
  the "rigify_meta" preset is detected from the names alone;
- one low-poly mesh of capsules, skinned with an Armature modifier and one vertex group
  per bone, with three materials (skin, shirt, trousers);
- 68 loose vertices on the front of the head in vertex groups face_00 .. face_67 (the
  face-point convention of blender_addon.export.character), skinned to the head bone;
- an action of FRAMES frames, a camera facing the character, a sun, a grey world,
  and Workbench set to show the materials' colours.
"""

from __future__ import annotations

import math

import bmesh
import bpy
import numpy as np
from mathutils import Matrix, Vector

FRAMES = 16
CHARACTER = "Demo Character"
ARMATURE = "Demo Rig"

# Bones of the rest pose (head, tail, parent, connected). The character faces -Y; its
# left (".L") is +X, as Blender characters are built.
_SPINE = [
    ("spine", (0, 0, 0.98), (0, 0, 1.10), None),
    ("spine.001", (0, 0, 1.10), (0, 0, 1.24), "spine"),
    ("spine.002", (0, 0, 1.24), (0, 0, 1.37), "spine.001"),
    ("spine.003", (0, 0, 1.37), (0, 0, 1.50), "spine.002"),
    ("spine.004", (0, 0, 1.50), (0, 0, 1.56), "spine.003"),  # neck
    ("spine.005", (0, 0, 1.56), (0, 0, 1.62), "spine.004"),
    ("spine.006", (0, 0, 1.62), (0, 0, 1.86), "spine.005"),  # head
]


def _side_bones(s: str, x: float) -> list[tuple[str, tuple, tuple, str | None]]:
    """The arm, hand and leg bones of one side; x = +1 for .L, -1 for .R."""
    def p(px, py, pz):
        return (px * x, py, pz)

    bones = [
        (f"shoulder.{s}", p(0.02, -0.01, 1.47), p(0.17, 0.0, 1.47), "spine.003"),
        (f"upper_arm.{s}", p(0.19, 0.0, 1.46), p(0.25, 0.0, 1.19), f"shoulder.{s}"),
        (f"forearm.{s}", p(0.25, 0.0, 1.19), p(0.29, -0.03, 0.94), f"upper_arm.{s}"),
        (f"hand.{s}", p(0.29, -0.03, 0.94), p(0.30, -0.04, 0.87), f"forearm.{s}"),
        (f"thigh.{s}", p(0.10, 0.0, 1.00), p(0.10, 0.0, 0.54), "spine"),
        (f"shin.{s}", p(0.10, 0.0, 0.54), p(0.10, 0.02, 0.10), f"thigh.{s}"),
        (f"foot.{s}", p(0.10, 0.02, 0.10), p(0.10, -0.11, 0.03), f"shin.{s}"),
        (f"toe.{s}", p(0.10, -0.11, 0.03), p(0.10, -0.18, 0.03), f"foot.{s}"),
        (f"heel.02.{s}", p(0.07, 0.05, 0.0), p(0.13, 0.05, 0.0), f"foot.{s}"),
    ]
    # Fingers hang down from the hand, spread from front (thumb, -Y) to back (pinky); the
    # four long fingers start at the end of a palm bone, as in the metarig.
    wrist = np.array(p(0.30, -0.04, 0.87))
    fingers = (("thumb", None, -0.035), ("f_index", "palm.01", -0.018), ("f_middle", "palm.02", 0.0),
               ("f_ring", "palm.03", 0.016), ("f_pinky", "palm.04", 0.03))
    for finger, palm, dy in fingers:
        start = wrist + np.array((0.0, dy, 0.0))
        parent = f"hand.{s}"
        if palm is not None:
            bones.append((f"{palm}.{s}", tuple(start), tuple(start + (0, 0, -0.05)), parent))
            parent, start = f"{palm}.{s}", start + np.array((0, 0, -0.05))
        step = np.array((0.004 * x, -0.01, -0.022)) if finger == "thumb" else np.array((0.004 * x, 0.0, -0.025))
        for i in range(1, 4):
            tail = start + step
            bones.append((f"{finger}.0{i}.{s}", tuple(start), tuple(tail), parent))
            parent, start = f"{finger}.0{i}.{s}", tail
    return bones


def rest_bones() -> list[tuple[str, tuple, tuple, str | None]]:
    return _SPINE + _side_bones("L", 1.0) + _side_bones("R", -1.0)


# Parts of the mesh: (bone, radius x, radius y, material); capsules along the bone.
_PARTS = [
    ("spine.006", 0.10, 0.10, 0),
    ("spine.004", 0.05, 0.05, 0),
    ("upper_arm.L", 0.05, 0.05, 1), ("upper_arm.R", 0.05, 0.05, 1),
    ("forearm.L", 0.042, 0.042, 1), ("forearm.R", 0.042, 0.042, 1),
    ("hand.L", 0.03, 0.045, 0), ("hand.R", 0.03, 0.045, 0),
    ("thigh.L", 0.075, 0.075, 2), ("thigh.R", 0.075, 0.075, 2),
    ("shin.L", 0.055, 0.055, 2), ("shin.R", 0.055, 0.055, 2),
    ("foot.L", 0.04, 0.04, 2), ("foot.R", 0.04, 0.04, 2),
]
_MATERIALS = (
    ("Skin", (0.85, 0.62, 0.48, 1.0)),
    ("Shirt", (0.15, 0.35, 0.75, 1.0)),
    ("Trousers", (0.18, 0.18, 0.22, 1.0)),
)


def _capsule(head: Vector, tail: Vector, rx: float, ry: float, segments: int = 12, rows: int = 3):
    """Vertices and faces of a capsule around head-tail (elliptic section rx, ry), caps of radius rx."""
    axis = (tail - head).normalized()
    # rx runs across the body (world X) where it can, ry front to back.
    across = Vector((1.0, 0.0, 0.0)) if abs(axis.x) < 0.9 else Vector((0.0, 0.0, 1.0))
    u = (across - axis * across.dot(axis)).normalized()
    v = axis.cross(u).normalized()
    rings = []  # (centre, scale along axis of the cap offset, ring scale)
    cap = 3
    for i in range(1, cap + 1):  # bottom cap, from the pole outwards
        angle = -math.pi / 2 + i * (math.pi / 2) / cap
        rings.append((head, math.sin(angle), math.cos(angle)))
    for i in range(1, rows):  # cylinder
        rings.append((head.lerp(tail, i / rows), 0.0, 1.0))
    for i in range(cap):  # top cap
        angle = i * (math.pi / 2) / cap
        rings.append((tail, math.sin(angle), math.cos(angle)))
    verts = [head - axis * rx]
    for centre, along, scale in rings:
        for k in range(segments):
            a = 2 * math.pi * k / segments
            verts.append(centre + axis * (along * rx) + u * (math.cos(a) * rx * scale) + v * (math.sin(a) * ry * scale))
    verts.append(tail + axis * rx)
    faces = []
    for k in range(segments):
        faces.append((0, 1 + (k + 1) % segments, 1 + k))
    for r in range(len(rings) - 1):
        a, b = 1 + r * segments, 1 + (r + 1) * segments
        for k in range(segments):
            k1 = (k + 1) % segments
            faces.append((a + k, a + k1, b + k1, b + k))
    top, last = len(verts) - 1, 1 + (len(rings) - 1) * segments
    for k in range(segments):
        faces.append((last + k, last + (k + 1) % segments, top))
    return verts, faces


def face_landmarks_2d() -> np.ndarray:
    """The 68-point face layout (iBUG 300-W order) on a unit face: x right in the image, y up."""
    pts = []
    for i in range(17):  # jaw, from the image's left (the subject's right) round the chin
        a = math.pi * i / 16
        pts.append((-0.9 * math.cos(a), 0.1 - 0.9 * math.sin(a)))
    for x0, x1 in ((-0.75, -0.15), (0.15, 0.75)):  # brows
        for i in range(5):
            t = i / 4
            pts.append((x0 + (x1 - x0) * t, 0.45 + 0.08 * math.sin(math.pi * t)))
    for i in range(4):  # nose bridge
        pts.append((0.0, 0.3 - 0.12 * i))
    for i in range(5):  # nose base
        pts.append((-0.18 + 0.09 * i, -0.15))
    for cx in (-0.4, 0.4):  # eyes: corner, two top, corner, two bottom
        for angle in (180, 135, 45, 0, -45, -135):
            a = math.radians(angle)
            pts.append((cx + 0.15 * math.cos(a), 0.25 + 0.06 * math.sin(a)))
    for angle in range(180, -180, -30):  # outer lips
        a = math.radians(angle)
        pts.append((0.3 * math.cos(a), -0.45 + 0.12 * math.sin(a)))
    for angle in (180, 135, 90, 45, 0, -45, -90, -135):  # inner lips
        a = math.radians(angle)
        pts.append((0.2 * math.cos(a), -0.45 + 0.05 * math.sin(a)))
    return np.array(pts)


def _build_armature(collection) -> bpy.types.Object:
    data = bpy.data.armatures.new(ARMATURE)
    rig = bpy.data.objects.new(ARMATURE, data)
    collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    for name, head, tail, parent in rest_bones():
        bone = data.edit_bones.new(name)
        bone.head, bone.tail, bone.roll = head, tail, 0.0
        if parent is not None:
            bone.parent = data.edit_bones[parent]
            bone.use_connect = (Vector(bone.parent.tail) - Vector(head)).length < 1e-6
    bpy.ops.object.mode_set(mode="OBJECT")
    return rig


def _material(name: str, color) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    material.diffuse_color = color  # Workbench's "Material" colour
    if material.node_tree is None and hasattr(material, "use_nodes") and bpy.app.version < (5, 0, 0):
        material.use_nodes = True
    if material.node_tree is not None:
        bsdf = material.node_tree.nodes.get("Principled BSDF")
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = color
    return material


def _build_mesh(collection, rig: bpy.types.Object) -> bpy.types.Object:
    bones = rig.data.bones
    verts: list[Vector] = []
    faces: list[tuple[int, ...]] = []
    face_materials: list[int] = []
    groups: dict[str, list[int]] = {}
    # Torso: one capsule from the hips to the shoulders, each vertex on its nearest spine bone.
    spine = [bones[n] for n in ("spine", "spine.001", "spine.002", "spine.003")]
    tv, tf = _capsule(Vector((0, 0, 1.02)), Vector((0, 0, 1.42)), 0.17, 0.11, rows=6)
    for i, co in enumerate(tv):
        nearest = min(spine, key=lambda b: abs(co.z - (b.head_local.z + b.tail_local.z) / 2))
        groups.setdefault(nearest.name, []).append(len(verts) + i)
    faces += [tuple(len(verts) + k for k in f) for f in tf]
    face_materials += [1] * len(tf)
    verts += tv
    for bone_name, rx, ry, material in _PARTS:
        bone = bones[bone_name]
        head, tail = bone.head_local, bone.tail_local
        if bone_name == "spine.006":  # the head: a rounder capsule, below the crown
            head, tail = Vector((0, 0, 1.68)), Vector((0, 0, 1.78))
        pv, pf = _capsule(head, tail, rx, ry)
        groups.setdefault(bone_name, []).extend(range(len(verts), len(verts) + len(pv)))
        faces += [tuple(len(verts) + k for k in f) for f in pf]
        face_materials += [material] * len(pf)
        verts += pv
    # Face points: loose vertices on the front of the head (radius 0.1 round the Z axis).
    landmarks = face_landmarks_2d()
    first_landmark = len(verts)
    for x, y in landmarks:
        px, pz = 0.06 * x, 1.73 + 0.07 * y
        verts.append(Vector((px, -math.sqrt(max(0.1 ** 2 - px ** 2, 0.0)) - 0.002, pz)))
    groups["spine.006"].extend(range(first_landmark, first_landmark + len(landmarks)))

    mesh = bpy.data.meshes.new(CHARACTER)
    mesh.from_pydata([tuple(v) for v in verts], [], faces)
    mesh.polygons.foreach_set("material_index", face_materials)
    bm = bmesh.new()
    bm.from_mesh(mesh)
    bmesh.ops.recalc_face_normals(bm, faces=bm.faces)  # outwards: the occlusion test relies on it
    bm.to_mesh(mesh)
    bm.free()
    for name, color in _MATERIALS:
        mesh.materials.append(_material(name, color))

    body = bpy.data.objects.new(CHARACTER, mesh)
    collection.objects.link(body)
    for name, indices in groups.items():
        body.vertex_groups.new(name=name).add(indices, 1.0, "REPLACE")
    for i in range(len(landmarks)):
        body.vertex_groups.new(name=f"face_{i:02d}").add([first_landmark + i], 1.0, "REPLACE")
    body.parent = rig
    modifier = body.modifiers.new("Armature", "ARMATURE")
    modifier.object = rig
    return body


def _rotation(rig: bpy.types.Object, bone: str, axis: str, degrees: float) -> None:
    """Pose a bone by a rotation about a world axis (taken in the bone's rest orientation)."""
    rest = rig.data.bones[bone].matrix_local.to_3x3()
    world = Matrix.Rotation(math.radians(degrees), 3, axis)
    pose_bone = rig.pose.bones[bone]
    pose_bone.rotation_mode = "QUATERNION"
    pose_bone.rotation_quaternion = (rest.inverted() @ world @ rest).to_quaternion()


def _animate(rig: bpy.types.Object, frames: int) -> None:
    """Walk in place with the left arm swinging, the right arm raised and waving."""
    for frame in range(1, frames + 1):
        phase = 2 * math.pi * (frame - 1) / frames
        swing = math.sin(phase)
        _rotation(rig, "thigh.L", "X", 28 * swing)
        _rotation(rig, "thigh.R", "X", -28 * swing)
        _rotation(rig, "shin.L", "X", -35 * max(0.0, -swing))
        _rotation(rig, "shin.R", "X", -35 * max(0.0, swing))
        _rotation(rig, "upper_arm.L", "X", -22 * swing)
        _rotation(rig, "forearm.L", "X", 15)
        _rotation(rig, "upper_arm.R", "Y", 130)  # raised to the side
        _rotation(rig, "forearm.R", "Y", 25 + 25 * math.sin(2 * phase))  # waving
        _rotation(rig, "spine.006", "Z", 10 * math.sin(phase))
        rig.pose.bones["spine"].location = (0.0, 0.015 * abs(math.sin(phase)), 0.0)
        for pose_bone in rig.pose.bones:
            if pose_bone.rotation_mode == "QUATERNION" and pose_bone.rotation_quaternion.angle > 1e-6:
                pose_bone.keyframe_insert("rotation_quaternion", frame=frame)
        rig.pose.bones["spine"].keyframe_insert("location", frame=frame)


def build_demo_scene(width: int = 96, height: int = 128, frames: int = FRAMES) -> bpy.types.Scene:
    """Fill the current file's scene with the demo character, camera, light and settings."""
    scene = bpy.context.scene
    scene.name = "Demo"
    collection = scene.collection
    rig = _build_armature(collection)
    _build_mesh(collection, rig)
    _animate(rig, frames)

    camera = bpy.data.objects.new("Demo Camera", bpy.data.cameras.new("Demo Camera"))
    camera.location = (0.0, -3.7, 1.0)
    camera.rotation_euler = (math.radians(90.0), 0.0, 0.0)
    camera.data.lens = 50.0
    collection.objects.link(camera)
    scene.camera = camera

    sun = bpy.data.objects.new("Demo Sun", bpy.data.lights.new("Demo Sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(50.0), math.radians(10.0), math.radians(-30.0))
    collection.objects.link(sun)

    world = bpy.data.worlds.new("Demo World")
    world.color = (0.6, 0.6, 0.62)
    scene.world = world

    scene.frame_start, scene.frame_end = 1, frames
    scene.render.fps = 12
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "MATERIAL"
    scene.cycles.samples = 8
    scene.frame_set(1)
    return scene
