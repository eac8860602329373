"""A small scene for the add-on's UI tests: a Mixamo-named armature waving its arm, a camera, tiny sizes.

Helpers, not tests (imported by test_operators.py and test_build.py).
"""

from __future__ import annotations

import math
import os
import sys

import bpy
import addon_utils  # noqa: E402  (importable only once bpy is)

ADDON = "blender_addon"

# name: (head, tail, parent). The character faces -Y; its right side is -X (Blender's .R).
MIXAMO_BONES = {
    "Hips": ((0.0, 0.0, 1.0), (0.0, 0.0, 1.1), None),
    "Spine": ((0.0, 0.0, 1.1), (0.0, 0.0, 1.42), "Hips"),
    "Neck": ((0.0, 0.0, 1.45), (0.0, 0.0, 1.58), "Spine"),
    "Head": ((0.0, 0.0, 1.58), (0.0, 0.0, 1.8), "Neck"),
    "RightArm": ((-0.18, 0.0, 1.42), (-0.45, 0.0, 1.2), "Spine"),
    "RightForeArm": ((-0.45, 0.0, 1.2), (-0.62, 0.0, 0.98), "RightArm"),
    "RightHand": ((-0.62, 0.0, 0.98), (-0.68, 0.0, 0.9), "RightForeArm"),
    "LeftArm": ((0.18, 0.0, 1.42), (0.45, 0.0, 1.2), "Spine"),
    "LeftForeArm": ((0.45, 0.0, 1.2), (0.62, 0.0, 0.98), "LeftArm"),
    "LeftHand": ((0.62, 0.0, 0.98), (0.68, 0.0, 0.9), "LeftForeArm"),
    "RightUpLeg": ((-0.1, 0.0, 1.0), (-0.1, 0.0, 0.55), "Hips"),
    "RightLeg": ((-0.1, 0.0, 0.55), (-0.1, 0.0, 0.1), "RightUpLeg"),
    "RightFoot": ((-0.1, 0.0, 0.1), (-0.1, -0.12, 0.0), "RightLeg"),
    "LeftUpLeg": ((0.1, 0.0, 1.0), (0.1, 0.0, 0.55), "Hips"),
    "LeftLeg": ((0.1, 0.0, 0.55), (0.1, 0.0, 0.1), "LeftUpLeg"),
    "LeftFoot": ((0.1, 0.0, 0.1), (0.1, -0.12, 0.0), "LeftLeg"),
}


def backend_python() -> str:
    """The Python that runs the backend in these tests: this one, or $ANIMATE_BACKEND_PYTHON.

    The variable lets the add-on tests run under another bpy (e.g. 4.2, without torch)
    against the project's backend environment.
    """
    return os.environ.get("ANIMATE_BACKEND_PYTHON") or sys.executable


def enable_addon(model: str = "tiny", python: str | None = None):
    """Enable the add-on through Blender's add-on system (so it has preferences) and set them."""
    if bpy.context.preferences.addons.get(ADDON) is None:
        addon_utils.enable(ADDON, default_set=True)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.model_dir = model
    prefs.backend_python = python or backend_python()
    prefs.device, prefs.precision = "cpu", "fp32"
    return prefs


def build_armature(scene, name: str = "Hero", bones=MIXAMO_BONES):
    data = bpy.data.armatures.new(name)
    armature = bpy.data.objects.new(name, data)
    scene.collection.objects.link(armature)
    bpy.context.view_layer.objects.active = armature
    bpy.ops.object.mode_set(mode="EDIT")
    for bone_name, (head, tail, _parent) in bones.items():
        bone = data.edit_bones.new(bone_name)
        bone.head, bone.tail = head, tail
    for bone_name, (_head, _tail, parent) in bones.items():
        if parent:
            data.edit_bones[bone_name].parent = data.edit_bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    return armature


def animate_wave(armature, frames: range) -> None:
    """Raise the right arm a little more on every frame."""
    bone = armature.pose.bones["RightArm"]
    bone.rotation_mode = "XYZ"
    for i, frame in enumerate(frames):
        bone.rotation_euler = (0.0, 0.0, 0.0)
        bone.rotation_euler = (0.0, 0.0, math.radians(25 * i))
        bone.keyframe_insert("rotation_euler", frame=frame)


def build_scene(tmp_path, frames: int = 3, size: tuple[int, int] = (64, 64), with_camera: bool = True):
    """Reset Blender and build the test scene; returns the scene (its settings filled for the add-on)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.fps = 24
    scene.frame_start, scene.frame_end = 1, frames
    armature = build_armature(scene)
    animate_wave(armature, range(1, frames + 1))
    if with_camera:
        data = bpy.data.cameras.new("Cam")
        camera = bpy.data.objects.new("Cam", data)
        camera.location = (0.0, -6.0, 0.95)
        camera.rotation_euler = (math.radians(90), 0.0, 0.0)
        scene.collection.objects.link(camera)
        scene.camera = camera
    return scene


def configure(scene, tmp_path, import_mode: str = "PLANE"):
    """The add-on's scene settings for a quick run: this armature, tiny generation, output in tmp_path."""
    settings = scene.animate_anyone
    settings.armature = scene.objects["Hero"]  # fills the mapping table from the detected preset
    settings.reference_engine = "WORKBENCH"
    settings.draw_hands = False  # the test rig has no finger bones
    settings.steps = 1
    settings.context_frames = 8
    settings.context_overlap = 2
    settings.output_dir = str(tmp_path / "out")
    settings.import_mode = import_mode
    return settings
