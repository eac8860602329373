"""From an animated armature to OpenPose keypoints in camera pixels, frame by frame.

For every frame the armature is evaluated (constraints, drivers, actions), each keypoint
is placed in world space from its bone (pose_bridge.bone_presets: a bone's head, tail or
an offset in the bone's own axes; which bone is rig_mapping's KeypointMapping), and
projected into the camera (camera.CameraView). The canvas is the output size, and the
camera frame is the one Blender renders at that size (see camera.output_frame), so that
the skeletons line up with the reference still rendered at the same size.

Face points come from the character's face_00 .. face_67 vertex groups (see character.py).

The neck is drawn as DWPose builds it (docs/skeleton.md): the mean of the two projected
shoulders, present only when both are (pose_bridge.keypoints.neck_from_shoulders), after
occlusion. neck="bone" uses the rig's own neck bone instead (the mapping's "neck" row).

A point is missing (confidence 0, coordinates 0) when it is behind the camera, outside
the frame, not mapped, or, with occlusion on, hidden behind the character's own meshes
(see camera.py).

This module holds the checks of what is asked for (armature, camera, frame range,
size), the evaluation of a frame, the Projector and the functions that run it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import bpy
import numpy as np

from pose_bridge import bone_presets
from pose_bridge.keypoints import BODY_NAMES, HAND_NAMES, Pose, PoseSequence, set_neck_from_shoulders

from ..errors import AddonError
from .camera import JOINT_TOLERANCE, CameraView, output_frame
from .character import FaceBones, FaceGroups, character_meshes, face_groups, face_points_world, own_bones, rest_frames
from .rig_mapping import HAND_GROUPS, KeypointMapping, check_neck_rule, check_required, resolve_mapping

log = logging.getLogger(__name__)

# Body keypoints placed from head-bone offsets: near the head's surface, not inside a
# limb, so occlusion treats them as surface points (camera.HEAD_TOLERANCE).
HEAD_POINTS = ("nose", "right_eye", "left_eye", "right_ear", "left_ear")


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


# ---------------------------------------------------------------- frames and evaluation


@contextlib.contextmanager
def restored_frame(scene: bpy.types.Scene) -> Iterator[None]:
    """Put the scene back on the frame it was on (and re-evaluate it there)."""
    frame, subframe = scene.frame_current, scene.frame_subframe
    try:
        yield
    finally:
        scene.frame_set(frame, subframe=subframe)


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
        self.faces: list[FaceGroups] = []
        if face:
            for obj in meshes:
                groups = face_groups(obj)
                if groups is not None:
                    self.faces.append(groups)
        self.face_bones = FaceBones(armature, meshes) if occlusion else None
        self.own: dict[tuple[str, str], dict[str, float]] = {}  # (group, keypoint) -> own bones' reach
        if occlusion:
            rest = rest_frames(armature)
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
        view = CameraView(scene, camera_eval, depsgraph, self)
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
            for landmark, point in face_points_world(face, depsgraph).items():
                if pose.face[landmark, 2] == 0:
                    pose.face[landmark] = view.pixel(point, "face")
        return pose


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
