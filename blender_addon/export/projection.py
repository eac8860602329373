"""From an animated armature to OpenPose keypoints in camera pixels, frame by frame.

For every frame the armature is evaluated (constraints, drivers, actions), each keypoint
is placed in world space from its bone (pose_bridge.bone_presets: a bone's head, tail or
an offset in the bone's own axes), and projected into the camera with
bpy_extras.object_utils.world_to_camera_view. The canvas is the output size, and the
camera frame is the one Blender renders at that size (see `output_frame`), so that the
skeletons line up with the reference still rendered at the same size.

Face points come from vertex groups, not bones. The convention:

    A mesh deformed by the armature (Armature modifier or parented to it) may have
    vertex groups named "face_00" .. "face_67", one per point of the 68-point face
    layout OpenPose uses (iBUG 300-W: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
    48-67 mouth). A point is the weight-averaged position of its group's vertices on
    the deformed mesh. One vertex at weight 1 pins a point to that vertex.

The neck is drawn as DWPose builds it (docs/skeleton.md): the mean of the two projected
shoulders, present only when both are (pose_bridge.keypoints.neck_from_shoulders), after
occlusion. neck="bone" uses the rig's own neck bone instead (the mapping's "neck" row).

A point is missing (confidence 0, coordinates 0) when it is behind the camera, outside
the frame, not mapped, or, with occlusion on, hidden behind the character's own meshes.

Occlusion looks only at the character's meshes (deformed by or parented to the armature)
and uses scene.ray_cast on the evaluated scene. Two kinds of point:

- Joints (shoulders, elbows, ... and finger joints) lie inside the limbs. A ray is cast
  from the camera towards the joint; the joint is hidden only when the first surface it
  meets, farther than a tolerance from the joint, belongs to geometry that does not move
  with the joint's own bones. A face moves with the bones that deform its vertices
  (vertex-group weights of the Armature modifier, at least FACE_WEIGHT of a vertex) and
  with the bone a mesh is parented to. A joint's own bones are the bones its keypoint is
  read from, the bones passing within the tolerance of the joint in the rest pose (twist
  bones, the other bone of a joint at a bone's tail), the parents of the bones it is read
  from (the bone on the other side of a joint at a bone's head; only the parent's part
  around the joint: the pelvis holds both hips), and the bones lying exactly on any of
  those (Rigify's DEF-/ORG-/MCH- copies of one bone); see own_bones. This works for one
  closed skin, for characters of separate pieces that overlap at the joints, and for
  open meshes. A mesh with neither weights nor a bone parent moves with no bone: it
  hides every joint behind it.
- Surface points (face points from vertex groups, and nose, eyes and ears from head-bone
  offsets) are hidden by any of the character's surfaces in front of them farther than
  their tolerance, so an ear on the far side of the head is dropped.

Tolerances scale with the character's size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from pose_bridge import bone_presets
from pose_bridge.keypoints import BODY_NAMES, FACE_POINTS, HAND_NAMES, Pose, PoseSequence, set_neck_from_shoulders

from ..errors import AddonError

log = logging.getLogger(__name__)

HAND_GROUPS = ("left_hand", "right_hand")

# Without these the drawn skeleton is not a body; the head points (nose, eyes, ears)
# may be missing, as they often are in OpenPose detections too.
REQUIRED_BODY = (
    "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
)
HEAD_POINTS = ("nose", "right_eye", "left_eye", "right_ear", "left_ear")

# KeypointMapping.preset when the whole mapping was given (preset "none"), as the panel does.
CUSTOM_PRESET = "custom"

FACE_GROUP_PATTERN = re.compile(r"^face_(\d\d)$")

NECK_RULES = ("shoulders", "bone")

# Occlusion tolerances, as fractions of the character's size (the diagonal of its
# bones' bounding box), so that they work at any scene scale.
# A joint sits inside a limb: a surface this close to it (its own skin, a touching
# limb) does not hide it; also the radius within which rest-pose bones count as the
# joint's own.
JOINT_TOLERANCE = 0.02
# A vertex moves with a bone when the bone has at least this share of its deform weights.
FACE_WEIGHT = 0.1
# Head points from bone offsets sit near, not on, the head's surface: any surface of
# the character farther than this in front of them hides them (an ear on the far side).
HEAD_TOLERANCE = 0.05
# Face points lie on the mesh: any surface farther than this in front hides them.
FACE_TOLERANCE = 0.015


@dataclass
class KeypointMapping:
    """Where each keypoint comes from on one armature: pose_bridge sources by group.

    body / left_hand / right_hand map BODY_NAMES / HAND_NAMES to a BonePoint, BoneOffset
    or BoneMidpoint naming this armature's bones; keypoints absent from a dict are not mapped.
    """

    preset: str
    body: dict[str, Any] = field(default_factory=dict)
    left_hand: dict[str, Any] = field(default_factory=dict)
    right_hand: dict[str, Any] = field(default_factory=dict)

    def group(self, name: str) -> dict[str, Any]:
        return {"body": self.body, "left_hand": self.left_hand, "right_hand": self.right_hand}[name]

    def unmapped(self, hands: bool = True, neck: str = "shoulders") -> list[str]:
        """Keypoint keys with no source: "nose", ..., "left_hand.index_1", ...

        With neck="shoulders" the neck needs no source of its own (it is made from the shoulders).
        """
        missing = [
            name for name in BODY_NAMES
            if name not in self.body and not (name == "neck" and neck == "shoulders")
        ]
        if hands:
            for group in HAND_GROUPS:
                missing += [f"{group}.{name}" for name in HAND_NAMES if name not in self.group(group)]
        return missing

    def bone_names(self) -> set[str]:
        names: set[str] = set()
        for group in ("body", "left_hand", "right_hand"):
            for source in self.group(group).values():
                names.update(source_bones(source))
        return names


def source_bones(source: Any) -> list[str]:
    """The bone names a pose_bridge source reads (two for a BoneMidpoint)."""
    if isinstance(source, tuple):
        return [name for alternative in source for name in source_bones(alternative)]
    if isinstance(source, bone_presets.BoneMidpoint):
        return [source.first.bone, source.second.bone]
    return [source.bone]


@dataclass
class ProjectionResult:
    """The keypoints of a frame range, and what could not be mapped."""

    poses: PoseSequence
    mapping: KeypointMapping
    unmapped: list[str]
    # Name of the mesh the face points came from; "" when face points are off or no
    # mesh has face_00..face_67 vertex groups.
    face_mesh: str = ""


# ---------------------------------------------------------------- checks


def resolve_armature(scene: bpy.types.Scene, name: str | None) -> bpy.types.Object:
    """The armature object called name, or the scene's only armature when name is empty."""
    if name:
        obj = bpy.data.objects.get(name)
        if obj is None:
            raise AddonError(f"there is no object called '{name}'; pick the character's armature")
        if obj.type != "ARMATURE":
            raise AddonError(
                f"'{name}' is a {obj.type.lower()} object, not an armature; pick the armature that "
                f"moves the character (the object whose bones you animate)"
            )
        return obj
    armatures = [obj for obj in scene.objects if obj.type == "ARMATURE"]
    if not armatures:
        raise AddonError(
            f"scene '{scene.name}' has no armature; add a rigged character, or pick its armature"
        )
    if len(armatures) > 1:
        names = ", ".join(sorted(obj.name for obj in armatures))
        raise AddonError(f"scene '{scene.name}' has several armatures ({names}); pick the one to use")
    return armatures[0]


def resolve_camera(scene: bpy.types.Scene, name: str | None) -> bpy.types.Object:
    """The camera object called name, or the scene's active camera when name is empty."""
    if name:
        obj = bpy.data.objects.get(name)
        if obj is None:
            raise AddonError(f"there is no object called '{name}'; pick a camera")
        if obj.type != "CAMERA":
            raise AddonError(f"'{name}' is a {obj.type.lower()} object, not a camera; pick a camera")
        return obj
    if scene.camera is None:
        raise AddonError(
            f"scene '{scene.name}' has no active camera; add a camera and make it the scene's camera "
            f"(Scene properties > Camera), or pick one"
        )
    if scene.camera.type != "CAMERA":
        raise AddonError(f"the scene's camera '{scene.camera.name}' is not a camera object; pick a camera")
    return scene.camera


def check_frame_range(frame_start: int, frame_end: int) -> None:
    if frame_end < frame_start:
        raise AddonError(
            f"frame range {frame_start}-{frame_end} has no frames; set the end frame at or after the start frame"
        )


def check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise AddonError(
            f"output size {width}x{height} must be positive multiples of 8 (the model works on 8x8 "
            f"pixel blocks); try {max(8, round(width / 8) * 8)}x{max(8, round(height / 8) * 8)}"
        )


# ---------------------------------------------------------------- mapping


def _source_from_override(value: Any, key: str, bone_names: set[str], armature_name: str) -> Any:
    """One override value as a pose_bridge source; None means "not mapped"."""
    if value is None or value == "":
        return None
    if isinstance(value, (bone_presets.BonePoint, bone_presets.BoneOffset, bone_presets.BoneMidpoint)):
        source = value
    elif isinstance(value, str):
        source = bone_presets.BonePoint(value, "head")
    elif isinstance(value, (tuple, list)) and len(value) == 2 and value[1] in ("head", "tail"):
        source = bone_presets.BonePoint(str(value[0]), str(value[1]))
    else:
        raise AddonError(
            f"mapping for '{key}' must be a bone name, (bone, 'head'|'tail'), a BonePoint/BoneOffset "
            f"or None, got {value!r}"
        )
    names = source_bones(source)
    if not all(names):
        return None
    for name in names:
        if name not in bone_names:
            raise AddonError(
                f"the mapping gives bone '{name}' for keypoint '{key}', but armature "
                f"'{armature_name}' has no such bone; pick one of its bones or clear the row"
            )
    return source


def _flatten_overrides(overrides: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """{(group, keypoint): value} from a flat {"left_wrist"|"left_hand.wrist": v} or nested {group: {kp: v}}."""
    flat: dict[tuple[str, str], Any] = {}
    for key, value in overrides.items():
        if key in ("body", *HAND_GROUPS) and isinstance(value, dict):
            for keypoint, source in value.items():
                flat[(key, keypoint)] = source
        elif "." in key:
            group, keypoint = key.split(".", 1)
            flat[(group, keypoint)] = value
        else:
            flat[("body", key)] = value
    for group, keypoint in flat:
        names = BODY_NAMES if group == "body" else HAND_NAMES if group in HAND_GROUPS else ()
        if keypoint not in names:
            raise AddonError(
                f"unknown keypoint '{keypoint}' in the bone mapping (group '{group}'); body keypoints are "
                f"{', '.join(BODY_NAMES)}; hand keypoints are left_hand.<name> / right_hand.<name> with "
                f"<name> one of {', '.join(HAND_NAMES)}"
            )
    return flat


def resolve_mapping(
    armature: bpy.types.Object,
    overrides: dict[str, Any] | None = None,
    preset: str = "auto",
) -> KeypointMapping:
    """The keypoint sources of an armature: the detected preset, then the overrides on top.

    overrides: {keypoint key: value} with keys a body name ("left_wrist") or
    "<left_hand|right_hand>.<hand name>" ("right_hand.index_2"), or nested {"body": {...}, "left_hand": {...}, "right_hand": {...}}
    (the panel's table); a value is a bone name (its head), (bone, "head"|"tail"), a
    pose_bridge BonePoint / BoneOffset, or None / "" to leave the keypoint unmapped.
    preset: "auto" to detect from bone names, "none" to start from an empty mapping (the
    result's preset is then "custom": all of it comes from the overrides), or
    a name from pose_bridge.bone_presets.PRESETS to use that preset.
    Keypoints the preset cannot resolve on this rig stay unmapped (KeypointMapping.unmapped).
    """
    bone_names = [bone.name for bone in armature.data.bones]
    if not bone_names:
        raise AddonError(f"armature '{armature.name}' has no bones; pick the character's rig")
    mapping = KeypointMapping(preset=CUSTOM_PRESET if preset == "none" else "")
    if preset != "none":
        if preset == "auto":
            match = bone_presets.match_preset(bone_names)
        elif preset in bone_presets.PRESETS:
            match = bone_presets.resolve_preset(bone_presets.PRESETS[preset], bone_names)
        else:
            raise AddonError(
                f"unknown bone preset '{preset}'; use auto, none, or one of {', '.join(bone_presets.PRESETS)}"
            )
        if match is not None and match.score > 0:
            mapping = KeypointMapping(
                preset=match.preset.name,
                body=dict(match.body),
                left_hand=dict(match.left_hand),
                right_hand=dict(match.right_hand),
            )
    if overrides:
        names = set(bone_names)
        for (group, keypoint), value in _flatten_overrides(overrides).items():
            source = _source_from_override(value, f"{group}.{keypoint}".removeprefix("body."), names, armature.name)
            if source is None:
                mapping.group(group).pop(keypoint, None)
            else:
                mapping.group(group)[keypoint] = source
    return mapping


def check_neck_rule(neck: str) -> None:
    if neck not in NECK_RULES:
        raise AddonError(
            f"unknown neck rule '{neck}'; use 'shoulders' (the mean of the shoulders, as DWPose draws it) "
            f"or 'bone' (the rig's own neck bone)"
        )


def check_required(mapping: KeypointMapping, armature: bpy.types.Object, neck: str = "shoulders") -> None:
    """Raise AddonError naming the body keypoints a skeleton cannot do without, when unmapped."""
    missing = [name for name in mapping.unmapped(hands=False, neck=neck) if name in REQUIRED_BODY]
    if not missing:
        return
    if not mapping.preset:
        where = f"armature '{armature.name}' matches no bone-name preset, so these body keypoints have no bone"
    elif mapping.preset == CUSTOM_PRESET:
        where = f"armature '{armature.name}': with the bone mapping given, these body keypoints have no bone"
    else:
        where = f"armature '{armature.name}' (preset {mapping.preset}): these body keypoints have no bone"
    raise AddonError(
        f"{where}: {', '.join(missing)}; map them to bones in the Bone Mapping table (or with "
        f"--map KEYPOINT=BONE on the command line)"
    )


# ---------------------------------------------------------------- frame and evaluation


@contextlib.contextmanager
def output_frame(scene: bpy.types.Scene, width: int, height: int) -> Iterator[None]:
    """Make the scene's camera frame the one rendered at width x height, then restore it.

    Blender derives the camera frame's aspect (and, with sensor fit Auto, which side the
    sensor spans) from the render resolution and pixel aspect. Projection and the
    reference render both run inside this, so keypoints and still share one frame.
    """
    render = scene.render
    saved = (
        render.resolution_x, render.resolution_y, render.resolution_percentage,
        render.pixel_aspect_x, render.pixel_aspect_y,
    )
    try:
        render.resolution_x, render.resolution_y, render.resolution_percentage = int(width), int(height), 100
        render.pixel_aspect_x = render.pixel_aspect_y = 1.0
        yield
    finally:
        (
            render.resolution_x, render.resolution_y, render.resolution_percentage,
            render.pixel_aspect_x, render.pixel_aspect_y,
        ) = saved


def evaluated_depsgraph(scene: bpy.types.Scene) -> bpy.types.Depsgraph:
    """The evaluated dependency graph of scene (the context's when scene is the context scene)."""
    if bpy.context.scene == scene:
        return bpy.context.evaluated_depsgraph_get()
    depsgraph = scene.view_layers[0].depsgraph
    if depsgraph is None:
        raise AddonError(f"scene '{scene.name}' cannot be evaluated from here; make it the active scene")
    depsgraph.update()
    return depsgraph


def bone_frames(armature_eval: bpy.types.Object, names: set[str] | None = None) -> dict[str, bone_presets.BoneFrame]:
    """World-space BoneFrames of an evaluated armature's pose bones (all, or those named)."""
    world = armature_eval.matrix_world
    frames = {}
    for pose_bone in armature_eval.pose.bones:
        if names is not None and pose_bone.name not in names:
            continue
        matrix = world @ pose_bone.matrix
        frames[pose_bone.name] = bone_presets.BoneFrame(
            head=np.array(matrix.translation, dtype=np.float64),
            tail=np.array(world @ pose_bone.tail, dtype=np.float64),
            x_axis=np.array(matrix.col[0].xyz.normalized(), dtype=np.float64),
            z_axis=np.array(matrix.col[2].xyz.normalized(), dtype=np.float64),
        )
    return frames


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


@dataclass
class _FaceGroups:
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


def _face_groups(obj: bpy.types.Object) -> _FaceGroups | None:
    points = _landmark_weights(obj, obj.data)
    if not points:
        return None
    return _FaceGroups(obj, len(obj.data.vertices), points)


def _face_points_world(face: _FaceGroups, depsgraph: bpy.types.Depsgraph) -> dict[int, np.ndarray]:
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


def _rest_frames(armature: bpy.types.Object) -> dict[str, bone_presets.BoneFrame]:
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
    rest: _rest_frames(armature), when the caller has it already.
    """
    bones = armature.data.bones
    rest = rest if rest is not None else _rest_frames(armature)
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


class _FaceBones:
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


# ---------------------------------------------------------------- projection


class Projector:
    """Projects one armature's keypoints through one camera, frame after frame.

    Use inside `output_frame(scene, width, height)`; `pose_at(frame)` sets the frame.
    neck: "shoulders" (DWPose's rule, the default) or "bone" (the mapping's neck source).
    """

    def __init__(
        self,
        scene: bpy.types.Scene,
        armature: bpy.types.Object,
        camera: bpy.types.Object,
        mapping: KeypointMapping,
        width: int,
        height: int,
        *,
        hands: bool = True,
        face: bool = True,
        occlusion: bool = False,
        neck: str = "shoulders",
    ) -> None:
        check_neck_rule(neck)
        self.scene, self.armature, self.camera, self.mapping = scene, armature, camera, mapping
        self.width, self.height = int(width), int(height)
        self.hands, self.occlusion, self.neck = hands, occlusion, neck
        self.bones_needed = mapping.bone_names()
        meshes = character_meshes(scene, armature)
        self.own_meshes = {obj.name for obj in meshes}
        self.faces: list[_FaceGroups] = []
        if face:
            for obj in meshes:
                groups = _face_groups(obj)
                if groups is not None:
                    self.faces.append(groups)
        self.face_bones = _FaceBones(armature, meshes) if occlusion else None
        self.own: dict[tuple[str, str], dict[str, float]] = {}  # (group, keypoint) -> own bones' reach
        if occlusion:
            rest = _rest_frames(armature)
            ends = [f.head for f in rest.values()] + [f.tail for f in rest.values()]
            rest_size = float(np.linalg.norm(np.ptp(np.array(ends), axis=0))) if ends else 1.0
            for group in ("body", *HAND_GROUPS):
                for name, source in mapping.group(group).items():
                    self.own[(group, name)] = own_bones(armature, source, JOINT_TOLERANCE * (rest_size or 1.0), rest)
        self.size: float | None = None  # character size, measured on the first frame

    @property
    def face_mesh(self) -> str:
        return ", ".join(face.obj.name for face in self.faces)

    def pose_at(self, frame: int) -> Pose:
        scene = self.scene
        scene.frame_set(frame)
        depsgraph = evaluated_depsgraph(scene)
        armature_eval = self.armature.evaluated_get(depsgraph)
        camera_eval = self.camera.evaluated_get(depsgraph)
        bones = bone_frames(armature_eval, self.bones_needed)
        if self.size is None:
            ends = [frame.head for frame in bones.values()] + [frame.tail for frame in bones.values()]
            extent = np.ptp(np.array(ends), axis=0) if ends else np.ones(3)
            self.size = float(np.linalg.norm(extent)) or 1.0

        pose = Pose(self.width, self.height)
        view = _CameraView(scene, camera_eval, depsgraph, self)
        for index, name in enumerate(BODY_NAMES):
            source = self.mapping.body.get(name)
            if name == "neck" and self.neck == "shoulders":
                continue  # made from the shoulders below
            if source is not None:
                kind = "head" if name in HEAD_POINTS else "joint"
                point = bone_presets.evaluate_source(source, bones)
                pose.body[index] = view.pixel(point, kind, self.own.get(("body", name), {}))
        if self.neck == "shoulders":
            set_neck_from_shoulders(pose.body)
        if self.hands:
            for group, points in (("left_hand", pose.left_hand), ("right_hand", pose.right_hand)):
                sources = self.mapping.group(group)
                for index, name in enumerate(HAND_NAMES):
                    source = sources.get(name)
                    if source is not None:
                        point = bone_presets.evaluate_source(source, bones)
                        points[index] = view.pixel(point, "joint", self.own.get((group, name), {}))
        for face in self.faces:
            for landmark, point in _face_points_world(face, depsgraph).items():
                if pose.face[landmark, 2] == 0:
                    pose.face[landmark] = view.pixel(point, "face")
        return pose


class _CameraView:
    """One frame's camera: world point -> (x, y, confidence) on the canvas."""

    def __init__(self, scene, camera_eval, depsgraph, projector: Projector) -> None:
        self.scene, self.camera, self.depsgraph, self.projector = scene, camera_eval, depsgraph, projector
        matrix = camera_eval.matrix_world.normalized()
        self.location = matrix.translation.copy()
        # Cameras look down their local -Z; +Z points back at the camera.
        self.backwards = matrix.col[2].xyz.normalized()
        self.orthographic = camera_eval.data.type == "ORTHO"

    def pixel(self, point: np.ndarray | None, kind: str, own: dict[str, float] | None = None) -> np.ndarray:
        """kind: "joint" (inside a limb; own: its bones' reach, see own_bones), "head" or "face" (on the surface)."""
        missing = np.zeros(3, dtype=np.float32)
        if point is None:
            return missing
        world = Vector(point)
        ndc = world_to_camera_view(self.scene, self.camera, world)
        if ndc.z <= 0.0:  # behind the camera (or in its plane)
            return missing
        x = ndc.x * self.projector.width
        y = (1.0 - ndc.y) * self.projector.height
        if not (0.0 <= x <= self.projector.width and 0.0 <= y <= self.projector.height):
            return missing
        if self.projector.occlusion:
            if kind == "joint":
                hidden = self._joint_hidden(world, ndc.z, own or {})
            else:
                hidden = self._surface_hidden(world, ndc.z, kind)
            if hidden:
                return missing
        return np.array([x, y, 1.0], dtype=np.float32)

    def _towards_camera(self, point: Vector, depth: float) -> tuple[Vector, float]:
        """The unit direction from point to the camera, and the distance."""
        if self.orthographic:
            return self.backwards.copy(), depth
        offset = self.location - point
        return offset.normalized(), offset.length

    def _step(self) -> float:
        return max((self.projector.size or 1.0) * 1e-4, 1e-6)

    def _joint_hidden(self, point: Vector, depth: float, own: dict[str, float]) -> bool:
        """From the camera to the joint: is the first surface met someone else's?"""
        towards, distance = self._towards_camera(point, depth)
        origin, direction = point + towards * distance, -towards
        tolerance = (self.projector.size or 1.0) * JOINT_TOLERANCE
        travelled = 0.0
        for _ in range(64):  # each hit on another object moves on; a bound in case of degenerate geometry
            reach = distance - tolerance - travelled
            if reach <= 0.0:
                return False
            hit, location, _normal, index, obj, _matrix = self.scene.ray_cast(
                self.depsgraph, origin + direction * travelled, direction, distance=reach
            )
            if not hit:
                return False
            if obj is not None and (obj.original or obj).name in self.projector.own_meshes:
                # The first of the character's surfaces: the joint's own flesh, or something in front of it.
                away = distance - (location - origin).length
                bones = self.projector.face_bones(obj.evaluated_get(self.depsgraph), index)
                return not any(away <= own.get(bone, -1.0) for bone in bones)
            travelled = (location - origin).length + self._step()
        return False

    def _surface_hidden(self, point: Vector, depth: float, kind: str) -> bool:
        """From the point to the camera: is any of the character's surfaces in the way?"""
        direction, distance = self._towards_camera(point, depth)
        size = self.projector.size or 1.0
        tolerance = size * {"head": HEAD_TOLERANCE, "face": FACE_TOLERANCE}[kind]
        travelled = tolerance
        for _ in range(64):
            if travelled >= distance:
                return False
            hit, location, _normal, _index, obj, _matrix = self.scene.ray_cast(
                self.depsgraph, point + direction * travelled, direction, distance=distance - travelled
            )
            if not hit:
                return False
            if obj is not None and (obj.original or obj).name in self.projector.own_meshes:
                return True
            travelled = (location - point).length + self._step()
        return False


def make_projector(
    scene: bpy.types.Scene,
    armature: bpy.types.Object,
    camera: bpy.types.Object,
    frame_start: int,
    frame_end: int,
    width: int,
    height: int,
    *,
    overrides: dict[str, Any] | None = None,
    preset: str = "auto",
    hands: bool = True,
    face: bool = True,
    occlusion: bool = False,
    neck: str = "shoulders",
    require_body: bool = True,
) -> Projector:
    """A Projector for frames frame_start..frame_end, after the checks that need no frame set.

    Raises AddonError for an empty frame range, a size that is not a multiple of 8, and
    (require_body) unmapped body keypoints: everything that can be known before the first
    frame is evaluated, so that a caller projecting frame by frame fails at once.
    neck: "shoulders" (DWPose's rule) or "bone" (the rig's neck bone, the mapping's "neck").
    """
    check_neck_rule(neck)
    if armature.type != "ARMATURE":
        raise AddonError(f"'{armature.name}' is not an armature; pick the character's armature")
    if camera.type != "CAMERA":
        raise AddonError(f"'{camera.name}' is not a camera; pick a camera")
    check_frame_range(frame_start, frame_end)
    check_size(width, height)
    mapping = resolve_mapping(armature, overrides, preset)
    if require_body:
        check_required(mapping, armature, neck)
    return Projector(
        scene, armature, camera, mapping, width, height, hands=hands, face=face, occlusion=occlusion, neck=neck
    )


def projection_result(projector: Projector, poses: list[Pose]) -> ProjectionResult:
    """The ProjectionResult of poses projected by projector, at the scene's frame rate."""
    scene = projector.scene
    fps = scene.render.fps / scene.render.fps_base
    log.info(
        "projected %d frames of '%s' through '%s' (preset %s)", len(poses), projector.armature.name,
        projector.camera.name, projector.mapping.preset or "none",
    )
    return ProjectionResult(
        poses=PoseSequence(poses, fps=fps),
        mapping=projector.mapping,
        unmapped=projector.mapping.unmapped(projector.hands, projector.neck),
        face_mesh=projector.face_mesh,
    )


def project_sequence(
    scene: bpy.types.Scene,
    armature: bpy.types.Object,
    camera: bpy.types.Object,
    frame_start: int,
    frame_end: int,
    width: int,
    height: int,
    *,
    overrides: dict[str, Any] | None = None,
    preset: str = "auto",
    hands: bool = True,
    face: bool = True,
    occlusion: bool = False,
    neck: str = "shoulders",
    require_body: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ProjectionResult:
    """Keypoints of frames frame_start..frame_end (inclusive) on a width x height canvas.

    The scene's current frame is restored afterwards. Raises AddonError for an empty frame
    range, a size that is not a multiple of 8, and (require_body) unmapped body keypoints.
    progress(done, total) is called after each frame (for a progress bar). neck: see make_projector.
    """
    projector = make_projector(
        scene, armature, camera, frame_start, frame_end, width, height, overrides=overrides, preset=preset,
        hands=hands, face=face, occlusion=occlusion, neck=neck, require_body=require_body,
    )
    frames = list(range(frame_start, frame_end + 1))
    poses = []
    with restored_frame(scene), output_frame(scene, width, height):
        for frame in frames:
            poses.append(projector.pose_at(frame))
            if progress is not None:
                progress(len(poses), len(frames))
    return projection_result(projector, poses)


@contextlib.contextmanager
def restored_frame(scene: bpy.types.Scene) -> Iterator[None]:
    """Put the scene back on the frame it was on (and re-evaluate it there)."""
    frame, subframe = scene.frame_current, scene.frame_subframe
    try:
        yield
    finally:
        scene.frame_set(frame, subframe=subframe)
