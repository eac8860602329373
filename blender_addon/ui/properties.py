"""Per-scene settings of the add-on: `scene.animate_anyone`.

Everything the panel shows and the operators read lives here, so that a .blend file
carries its own settings (the command-line script and batch mode read them too).
Helpers at the bottom turn "use the scene's value" toggles into effective values.
"""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy.types import PropertyGroup

from pose_bridge.settings import GENERATION_SETTINGS, SETTINGS, default_of

from . import mapping


KEYPOINT_GROUPS = (
    ("body", "Body", "OpenPose COCO-18 body point"),
    ("left_hand", "Left Hand", "Left hand point (subject's left, Blender's .L)"),
    ("right_hand", "Right Hand", "Right hand point (subject's right, Blender's .R)"),
)

BONE_ENDS = (
    ("head", "Head", "The bone's head (its root)"),
    ("tail", "Tail", "The bone's tail (its tip)"),
)

SOURCE_KINDS = (
    ("POINT", "Bone End", "The head or tail of one bone"),
    ("OFFSET", "Offset", "A point at an offset from the bone's head, in bone lengths along the bone's axes"),
    ("MIDPOINT", "Midpoint", "The middle of two bone ends (e.g. the neck between the shoulders)"),
)

NECK_RULES = (
    ("shoulders", "Between Shoulders",
     "The middle of the two shoulders, as DWPose drew every skeleton the model was trained on (recommended)"),
    ("bone", "Neck Bone", "The rig's own neck bone (the Neck row of the bone mapping)"),
)

IMPORT_MODES = (
    ("PLANE", "Plane", "A plane facing the camera that fills its frame, with the video as an emission texture"),
    ("STRIP", "Sequencer Strip", "A movie strip in the video sequencer, on a free channel at the first frame"),
    ("COMPOSITOR", "Compositor Node", "A movie clip node in the compositor"),
    ("NONE", "Nothing", "Leave the result in the job folder"),
)

REFERENCE_SOURCES = (
    ("RENDER", "Render", "Render a still of the scene at a chosen frame"),
    ("IMAGE", "Image File", "Use an image file of the character"),
)

REFERENCE_ENGINES = (
    ("SCENE", "Scene's Engine", "The scene's own render engine and settings"),
    ("CYCLES", "Cycles", "Cycles, fast enough on the CPU at low sample counts"),
    ("WORKBENCH", "Workbench", "Workbench: flat shading, fastest"),
    ("EEVEE", "EEVEE", "EEVEE: slow without a GPU"),
)






# Blender's IntProperty holds 32-bit numbers.
_INT_LIMIT = 2**31 - 1


def setting_property(name: str, **overrides):
    """The bpy property of the JobSettings field `name`, as pose_bridge.settings declares it.

    Label, tooltip, default, range and choices come from the declaration; overrides are
    Blender-only details (a slider's step, a scene frame's minimum of 0).
    """
    info, default = SETTINGS[name], default_of(name)
    common = {"name": info.label, "description": info.help[:1].upper() + info.help[1:], "default": default}
    if isinstance(default, bool):
        return BoolProperty(**common, **overrides)
    if info.choices:
        return EnumProperty(items=info.choices, **common, **overrides)
    if isinstance(default, str):
        return StringProperty(**common, **overrides)
    limits = {}
    if info.minimum is not None:
        limits["min"] = info.minimum
    if info.maximum is not None:
        limits["max"] = info.maximum
    if info.soft_maximum is not None:
        limits["soft_max"] = info.soft_maximum
    if isinstance(default, int):
        limits = {key: int(max(-_INT_LIMIT, min(_INT_LIMIT, value))) for key, value in limits.items()}
        return IntProperty(**common, **{**limits, **overrides})
    return FloatProperty(**common, **{**limits, **overrides})


def add_setting_properties(cls, names, **overrides) -> None:
    """Give cls (a PropertyGroup or an Operator, before it is registered) one property per setting
    in names: a setting declared in pose_bridge.settings appears everywhere with one edit."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    for name in names:
        annotations[name] = setting_property(name, **overrides)
    cls.__annotations__ = annotations


class ANIMATE_PG_bone_map_item(PropertyGroup):
    """One keypoint and where on the armature it comes from (a pose_bridge.bone_presets source)."""

    group: EnumProperty(name="Group", items=KEYPOINT_GROUPS, default="body")
    keypoint: StringProperty(name="Keypoint", description="OpenPose keypoint name")
    kind: EnumProperty(name="Kind", items=SOURCE_KINDS, default="POINT")
    bone: StringProperty(name="Bone", description="Bone of the armature this keypoint follows; empty: not mapped")
    end: EnumProperty(name="End", items=BONE_ENDS, default="head")
    offset: FloatVectorProperty(
        name="Offset",
        size=3,
        description="Offset: position from the bone's head in bone lengths along its X, Y (head to tail), Z axes",
    )
    bone2: StringProperty(name="Second Bone", description="Midpoint: the other bone")
    end2: EnumProperty(name="Second End", items=BONE_ENDS, default="head")


def _poll_armature(_self, obj) -> bool:
    return obj.type == "ARMATURE"


def _poll_camera(_self, obj) -> bool:
    return obj.type == "CAMERA"


def _armature_changed(self, context) -> None:
    # A new armature gets its preset detected at once; an edited mapping of the same
    # armature is left alone (Refresh Mapping redoes it on request).
    if self.armature is not None:
        mapping.fill_from_preset(self, self.armature)
    else:
        self.bone_map.clear()
        self.preset_label = ""


class ANIMATE_PG_scene_settings(PropertyGroup):
    """Settings of one scene's generation (scene.animate_anyone)."""

    # Character and camera.
    armature: PointerProperty(
        name="Armature",
        type=bpy.types.Object,
        poll=_poll_armature,
        update=_armature_changed,
        description="The rigged character whose motion drives the video",
    )
    camera: PointerProperty(
        name="Camera",
        type=bpy.types.Object,
        poll=_poll_camera,
        description="Camera the skeleton is seen from; empty: the scene's active camera",
    )

    # Frames and size.
    use_scene_range: BoolProperty(name="Use Scene Range", default=True, description="Use the scene's frame range")
    frame_start: setting_property("frame_start", min=0)
    frame_end: setting_property("frame_end", min=0)
    use_render_size: BoolProperty(
        name="Use Render Size",
        default=True,
        description="Use the scene's render size (with its percentage), rounded to multiples of 8",
    )
    width: setting_property("width", step=8)
    height: setting_property("height", step=8)

    # Bone mapping.
    bone_map: CollectionProperty(type=ANIMATE_PG_bone_map_item)
    bone_map_index: IntProperty(name="Active Keypoint", default=0)
    preset_label: StringProperty(name="Preset", description="The bone-name preset detected for this armature")
    show_hand_mapping: BoolProperty(name="Show Hand Keypoints", default=False)

    # What to draw.
    occlusion: BoolProperty(
        name="Occlusion",
        default=False,
        description="Drop joints hidden behind the character's own meshes (ray casting; slower)",
    )
    neck: EnumProperty(name="Neck", items=NECK_RULES, default="shoulders",
                       description="Where the skeleton's neck point is drawn")

    # Reference still.
    reference_source: EnumProperty(name="Reference", items=REFERENCE_SOURCES, default="RENDER")
    reference_frame: IntProperty(name="Frame", default=1, description="Frame the reference still is rendered at")
    reference_engine: EnumProperty(name="Engine", items=REFERENCE_ENGINES, default="CYCLES")
    reference_image: StringProperty(
        name="Image",
        subtype="FILE_PATH",
        description="Image of the character, front view, like the first frame of the video",
    )

    # The generation settings (steps, guidance_scale, seed, windows, sampler, retarget, hands,
    # face) are added below from their declarations in pose_bridge.settings.

    # Output.
    output_dir: StringProperty(
        name="Output Folder",
        subtype="DIR_PATH",
        default="//animate_anyone/",
        description="Folder the job folders are written into (// is the .blend file's folder)",
    )
    import_mode: EnumProperty(name="Import As", items=IMPORT_MODES, default="PLANE")
    last_job_dir: StringProperty(name="Last Job", subtype="DIR_PATH", description="The job folder written last")


add_setting_properties(ANIMATE_PG_scene_settings, GENERATION_SETTINGS)

CLASSES = (ANIMATE_PG_bone_map_item, ANIMATE_PG_scene_settings)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    bpy.types.Scene.animate_anyone = PointerProperty(type=ANIMATE_PG_scene_settings)


def unregister() -> None:
    if hasattr(bpy.types.Scene, "animate_anyone"):
        del bpy.types.Scene.animate_anyone
    _unregister_classes()


# ---------------------------------------------------------------- effective values


def effective_camera(scene: bpy.types.Scene, settings: ANIMATE_PG_scene_settings):
    """The chosen camera, or the scene's active camera; None when neither exists."""
    return settings.camera or scene.camera


def effective_frame_range(scene: bpy.types.Scene, settings: ANIMATE_PG_scene_settings) -> tuple[int, int]:
    if settings.use_scene_range:
        return scene.frame_start, scene.frame_end
    return settings.frame_start, settings.frame_end


def effective_size(scene: bpy.types.Scene, settings: ANIMATE_PG_scene_settings) -> tuple[int, int, str]:
    """(width, height, note): the output size, and a note for the panel when it was rounded."""
    from ..export.job_export import output_size, round_to_8

    if settings.use_render_size:
        return output_size(scene)
    width, height = round_to_8(settings.width), round_to_8(settings.height)
    note = ""
    if (width, height) != (settings.width, settings.height):
        note = f"{settings.width}x{settings.height} rounded to {width}x{height} (multiples of 8)"
    return width, height, note
