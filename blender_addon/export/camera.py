"""The camera: its frame at the output size, and one frame's view of world points.

output_frame makes the scene's camera frame the one Blender renders at the output size,
so that the skeletons and the reference still rendered at that size line up. CameraView
turns a world point into canvas pixels with bpy_extras.object_utils.world_to_camera_view,
and, with occlusion on, decides whether the character's own meshes hide it.

Occlusion looks only at the character's meshes (character.character_meshes) and uses
scene.ray_cast on the evaluated scene. Two kinds of point:

- Joints (shoulders, elbows, ... and finger joints) lie inside the limbs. A ray is cast
  from the camera towards the joint; the joint is hidden only when the first surface it
  meets, farther than a tolerance from the joint, belongs to geometry that does not move
  with the joint's own bones (character.FaceBones, character.own_bones). This works for
  one closed skin, for characters of separate pieces that overlap at the joints, and for
  open meshes.
- Surface points (face points from vertex groups, and nose, eyes and ears from head-bone
  offsets) are hidden by any of the character's surfaces in front of them farther than
  their tolerance, so an ear on the far side of the head is dropped.

Tolerances scale with the character's size. Kept apart from the projection, which
decides which points to place and asks this module where they land.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

if TYPE_CHECKING:  # only for annotations: projection imports this module
    from .projection import Projector

# Occlusion tolerances, as fractions of the character's size (the diagonal of its
# bones' bounding box), so that they work at any scene scale.
# A joint sits inside a limb: a surface this close to it (its own skin, a touching
# limb) does not hide it; also the radius within which rest-pose bones count as the
# joint's own.
JOINT_TOLERANCE = 0.02
# Head points from bone offsets sit near, not on, the head's surface: any surface of
# the character farther than this in front of them hides them (an ear on the far side).
HEAD_TOLERANCE = 0.05
# Face points lie on the mesh: any surface farther than this in front hides them.
FACE_TOLERANCE = 0.015


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


class CameraView:
    """One frame's camera: world point -> (x, y, confidence) on the canvas.

    projector: the Projector this view serves; read for the canvas size, the occlusion
    switch, the character's size and meshes, and which bones move each face (FaceBones).
    """

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
