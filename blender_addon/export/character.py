"""The character's meshes: which belong to it, its face points, and which bones move what.

The character is the set of meshes its armature deforms (Armature modifier) or carries
(parented to it or to one of its bones); see character_meshes.

Face points come from vertex groups, not bones. The convention:

    A mesh deformed by the armature (Armature modifier or parented to it) may have
    vertex groups named "face_00" .. "face_67", one per point of the 68-point face
    layout OpenPose uses (iBUG 300-W: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
    48-67 mouth). A point is the weight-averaged position of its group's vertices on
    the deformed mesh. One vertex at weight 1 pins a point to that vertex.

For occlusion (camera.py) a joint is hidden only by surfaces that do not move with its
own bones. A face of a mesh moves with the bones that deform its vertices (vertex-group
weights of the Armature modifier, at least FACE_WEIGHT of a vertex) and with the bone a
mesh is parented to (FaceBones). A joint's own bones are the bones its keypoint is read
from, the bones passing within a tolerance of the joint in the rest pose (twist bones,
the other bone of a joint at a bone's tail), the parents of the bones it is read from
(the bone on the other side of a joint at a bone's head; only the parent's part around
the joint: the pelvis holds both hips), and the bones lying exactly on any of those
(Rigify's DEF-/ORG-/MCH- copies of one bone); see own_bones. A mesh with neither
weights nor a bone parent moves with no bone: it hides every joint behind it.

These read the rig and its meshes only, not the camera, so they are kept apart from the
projection and the camera view that use them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np

from pose_bridge import bone_presets
from pose_bridge.keypoints import FACE_POINTS

from .rig_mapping import source_bones

FACE_GROUP_PATTERN = re.compile(r"^face_(\d\d)$")

# A vertex moves with a bone when the bone has at least this share of its deform weights.
FACE_WEIGHT = 0.1


def character_meshes(scene: bpy.types.Scene, armature: bpy.types.Object) -> list[bpy.types.Object]:
    """Mesh objects the armature deforms (Armature modifier) or carries (parented), by name."""
    meshes = []
    for obj in scene.objects:
        if obj.type != "MESH":
            continue
        deformed = any(mod.type == "ARMATURE" and mod.object == armature for mod in obj.modifiers)
        parent = obj.parent
        while parent is not None and parent != armature:
            parent = parent.parent
        if deformed or parent == armature:
            meshes.append(obj)
    return sorted(meshes, key=lambda obj: obj.name)


# ---------------------------------------------------------------- face points


@dataclass
class FaceGroups:
    """The face_NN vertex groups of one mesh, read once from the undeformed mesh."""

    obj: bpy.types.Object
    vertex_count: int
    # landmark index -> (vertex indices, weights summing to 1)
    points: dict[int, tuple[np.ndarray, np.ndarray]]


def _landmark_weights(obj: bpy.types.Object, mesh: bpy.types.Mesh) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{landmark: (vertex indices, normalized weights)} of the face_NN groups of obj's mesh."""
    landmark_of_group = {}
    for group in obj.vertex_groups:
        found = FACE_GROUP_PATTERN.match(group.name)
        if found and int(found.group(1)) < FACE_POINTS:
            landmark_of_group[group.index] = int(found.group(1))
    if not landmark_of_group:
        return {}
    indices: dict[int, list[int]] = {}
    weights: dict[int, list[float]] = {}
    for vertex in mesh.vertices:
        for element in vertex.groups:
            landmark = landmark_of_group.get(element.group)
            if landmark is not None and element.weight > 0.0:
                indices.setdefault(landmark, []).append(vertex.index)
                weights.setdefault(landmark, []).append(element.weight)
    points = {}
    for landmark, idx in indices.items():
        w = np.asarray(weights[landmark], dtype=np.float64)
        points[landmark] = (np.asarray(idx, dtype=np.int64), w / w.sum())
    return points


def face_groups(obj: bpy.types.Object) -> FaceGroups | None:
    points = _landmark_weights(obj, obj.data)
    if not points:
        return None
    return FaceGroups(obj, len(obj.data.vertices), points)


def face_points_world(face: FaceGroups, depsgraph: bpy.types.Depsgraph) -> dict[int, np.ndarray]:
    """World positions of the face points on the deformed mesh of this frame."""
    obj_eval = face.obj.evaluated_get(depsgraph)
    mesh = obj_eval.to_mesh()
    try:
        count = len(mesh.vertices)
        coords = np.empty(count * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", coords)
        coords = coords.reshape(count, 3).astype(np.float64)
        points = face.points
        if count != face.vertex_count:
            # A modifier changed the topology (a subdivision after the armature, say):
            # use the weights the evaluated mesh carries instead of the original indices.
            points = _landmark_weights(obj_eval, mesh)
    finally:
        obj_eval.to_mesh_clear()
    world = np.array(obj_eval.matrix_world, dtype=np.float64)
    result = {}
    for landmark, (idx, w) in points.items():
        local = (coords[idx] * w[:, None]).sum(axis=0)
        result[landmark] = world[:3, :3] @ local + world[:3, 3]
    return result


# ---------------------------------------------------------------- which bones move what


def rest_frames(armature: bpy.types.Object) -> dict[str, bone_presets.BoneFrame]:
    """BoneFrames of the rest pose, in armature space."""
    frames = {}
    for bone in armature.data.bones:
        matrix = bone.matrix_local
        frames[bone.name] = bone_presets.BoneFrame(
            head=np.array(bone.head_local, dtype=np.float64),
            tail=np.array(bone.tail_local, dtype=np.float64),
            x_axis=np.array(matrix.col[0].xyz.normalized(), dtype=np.float64),
            z_axis=np.array(matrix.col[2].xyz.normalized(), dtype=np.float64),
        )
    return frames


def _segment_distances(point: np.ndarray, heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """Distances from point to each segment heads[i]-tails[i]."""
    axes = tails - heads
    length2 = np.maximum((axes * axes).sum(axis=1), 1e-24)
    t = np.clip(((point - heads) * axes).sum(axis=1) / length2, 0.0, 1.0)
    return np.linalg.norm(point - (heads + t[:, None] * axes), axis=1)


def own_bones(
    armature: bpy.types.Object, source: Any, radius: float, rest: dict[str, bone_presets.BoneFrame] | None = None
) -> dict[str, float]:
    """The bones a joint's keypoint moves with, for occlusion (see the module docstring).

    Returns {bone: reach}: a surface moving with the bone counts as the joint's own within
    `reach` of the joint. The bones meeting at the joint reach any distance. A parent
    reaches as far as its own bone lies from the joint (plus radius): the pelvis holds
    both hips, but only its part around a hip is that hip's flesh, so the far hip seen
    from the side stays hidden behind the pelvis.
    radius: armature-space distance within which rest-pose bones count as meeting at the joint.
    rest: rest_frames(armature), when the caller has it already.
    """
    bones = armature.data.bones
    rest = rest if rest is not None else rest_frames(armature)
    names = list(rest)
    heads = np.array([rest[name].head for name in names]).reshape(-1, 3)
    tails = np.array([rest[name].tail for name in names]).reshape(-1, 3)
    point = bone_presets.evaluate_source(source, rest)
    index = {name: i for i, name in enumerate(names)}
    sources = [name for name in source_bones(source) if name in bones]
    reach: dict[str, float] = {name: math.inf for name in sources}
    if point is not None:
        distances = _segment_distances(point, heads, tails)
        for i in np.nonzero(distances <= radius)[0]:
            reach[names[i]] = math.inf
        for name in sources:
            parent = bones[name].parent
            if parent is not None and parent.name not in reach:
                reach[parent.name] = float(distances[index[parent.name]]) + radius
    # Copies of the same bone (Rigify's DEF-/ORG-/MCH- bones) move together.
    same = radius * 0.05
    for name, bone_reach in list(reach.items()):
        i = index[name]
        copies = (np.linalg.norm(heads - heads[i], axis=1) <= same) & (np.linalg.norm(tails - tails[i], axis=1) <= same)
        for j in np.nonzero(copies)[0]:
            reach.setdefault(names[j], bone_reach)
    return reach


def _bone_parent(obj: bpy.types.Object, armature: bpy.types.Object) -> str:
    """The armature bone obj (or the object it hangs from) is parented to; "" if none."""
    while obj is not None:
        if obj.parent == armature:
            return obj.parent_bone if obj.parent_type == "BONE" else ""
        obj = obj.parent
    return ""


class FaceBones:
    """Which of the armature's bones move each face of the character's meshes.

    A face moves with the bones holding at least FACE_WEIGHT of the deform weights of one
    of its vertices (through an Armature modifier of this armature), and with the bone the
    mesh is parented to. Read lazily, only for the faces rays hit, and cached while the
    evaluated mesh has the original's faces (an Armature modifier keeps them).
    """

    def __init__(self, armature: bpy.types.Object, meshes: list[bpy.types.Object]) -> None:
        self.deforming = {bone.name for bone in armature.data.bones if bone.use_deform}
        self.parent_bone = {obj.name: _bone_parent(obj, armature) for obj in meshes}
        self.skinned = {
            obj.name for obj in meshes
            if any(mod.type == "ARMATURE" and mod.object == armature and mod.use_vertex_groups for mod in obj.modifiers)
        }
        self.face_counts = {obj.name: len(obj.data.polygons) for obj in meshes}
        self.cache: dict[tuple[str, int], frozenset[str]] = {}

    def __call__(self, obj_eval: bpy.types.Object, index: int) -> frozenset[str]:
        """The bones moving face `index` of an evaluated mesh (the index scene.ray_cast gives)."""
        name = obj_eval.original.name
        parent = self.parent_bone.get(name, "")
        if name not in self.skinned or index < 0:
            return frozenset({parent} - {""})
        original = bpy.data.objects.get(name)
        same_faces = original is not None and len(obj_eval.data.polygons) == self.face_counts.get(name)
        key = (name, index)
        if same_faces and key in self.cache:
            return self.cache[key]
        obj = original if same_faces else obj_eval
        mesh = obj.data
        if index >= len(mesh.polygons):
            return frozenset({parent} - {""})
        names = {group.index: group.name for group in obj.vertex_groups}
        bones = {parent} - {""}
        for vertex in mesh.polygons[index].vertices:
            weights = {}
            for element in mesh.vertices[vertex].groups:
                bone = names.get(element.group)
                if bone in self.deforming and element.weight > 0.0:
                    weights[bone] = element.weight
            total = sum(weights.values())
            bones |= {bone for bone, weight in weights.items() if weight >= FACE_WEIGHT * total}
        result = frozenset(bones)
        if same_faces:
            self.cache[key] = result
        return result
