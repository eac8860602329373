"""The "Animate" tab of the 3D viewport's sidebar, and the progress shown in the status bar."""

from __future__ import annotations

import bpy
from bpy.types import Panel, UIList

from ..connection import client as backend_client
from ..connection import generation

from . import mapping, preferences
from .mapping import keypoint_label
from .properties import effective_camera, effective_frame_range, effective_size


class ANIMATE_UL_bone_map(UIList):
    """Keypoint | bone | which end; hand rows only when asked for."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        settings = data
        row = layout.row(align=True)
        split = row.split(factor=0.35, align=True)
        split.label(text=keypoint_label(item.group, item.keypoint), icon="BLANK1" if item.bone else "ERROR")
        armature = settings.armature
        if armature is not None and armature.type == "ARMATURE":
            split.prop_search(item, "bone", armature.data, "bones", text="")
        else:
            split.prop(item, "bone", text="")
        if item.kind == "POINT":
            row.prop(item, "end", text="")
        else:
            row.prop(item, "kind", text="")

    def filter_items(self, context, data, propname):
        items = getattr(data, propname)
        show_hands = data.show_hand_mapping
        flags = [self.bitflag_filter_item if show_hands or item.group == "body" else 0 for item in items]
        return flags, []


def split_layout(layout):
    """`layout` with labels beside their fields, as Blender's property panels draw them."""
    layout.use_property_split = True
    layout.use_property_decorate = False
    return layout


class AnimatePanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Animate"


class AnimateSubPanel(AnimatePanel):
    """A closed-by-default section under the main panel."""

    bl_parent_id = "ANIMATE_PT_main"
    bl_options = {"DEFAULT_CLOSED"}


class ANIMATE_PT_main(AnimatePanel, Panel):
    bl_idname = "ANIMATE_PT_main"
    bl_label = "Animate Anyone"

    def draw(self, context):
        layout = split_layout(self.layout)
        scene = context.scene
        settings = scene.animate_anyone

        col = layout.column()
        col.prop(settings, "armature")
        col.prop(settings, "camera")
        if settings.camera is None:
            camera = scene.camera
            col.label(text=f"Scene camera: {camera.name}" if camera else "The scene has no camera", icon="CAMERA_DATA")

        col = layout.column(heading="Frames")
        col.prop(settings, "use_scene_range")
        if settings.use_scene_range:
            start, end = effective_frame_range(scene, settings)
            col.label(text=f"{start} - {end} ({max(0, end - start + 1)} frames)")
        else:
            sub = col.column(align=True)
            sub.prop(settings, "frame_start")
            sub.prop(settings, "frame_end")

        col = layout.column(heading="Size")
        col.prop(settings, "use_render_size")
        if not settings.use_render_size:
            sub = col.column(align=True)
            sub.prop(settings, "width")
            sub.prop(settings, "height")
        width, height, note = effective_size(scene, settings)
        col.label(text=f"{width} x {height} px")
        if note:
            col.label(text=note, icon="INFO")

        _draw_run(layout, context)


def _draw_run(layout, context) -> None:
    """Buttons and progress: the part of the panel people look at while it works."""
    settings = context.scene.animate_anyone
    box = layout.box()
    active = generation.ACTIVE
    if active is not None and not active.finished:
        progress = active.progress
        box.label(text=progress.headline(), icon="RENDER_ANIMATION")
        if hasattr(box, "progress"):
            box.progress(factor=progress.factor(), type="BAR", text=progress.detail())
        else:
            box.label(text=progress.detail())
        box.operator("animate_anyone.cancel_generate", icon="CANCEL")
        return
    col = box.column(align=True)
    col.scale_y = 1.4
    col.operator("animate_anyone.generate", icon="RENDER_ANIMATION")
    row = box.row(align=True)
    row.operator("animate_anyone.preview_skeleton", icon="ARMATURE_DATA")
    row.operator("animate_anyone.export_job", icon="EXPORT")
    box.operator("animate_anyone.import_result", icon="IMPORT")
    if active is not None and active.message:
        box.label(text=active.message, icon="ERROR" if active.state == "failed" else "INFO")
    if settings.last_job_dir:
        job_name = bpy.path.basename(settings.last_job_dir.rstrip("/\\"))
        box.label(text=f"Last job: {job_name}")
    prefs = preferences.get_preferences(context)
    model = prefs.model_dir.strip() if prefs is not None else ""
    if model == "tiny":
        box.label(text="Model: tiny UNTRAINED test model", icon="ERROR")
    elif not model:
        box.label(text="No model folder set (add-on preferences)", icon="ERROR")
    if prefs is not None and not prefs.run_in_process and not preferences.resolved_backend_python(prefs):
        box.label(text="No backend: Set up Backend in the add-on preferences", icon="ERROR")
    if backend_client.shared_is_running():
        box.operator("animate_anyone.stop_backend", icon="X")


class ANIMATE_PT_mapping(AnimateSubPanel, Panel):
    bl_idname = "ANIMATE_PT_mapping"
    bl_label = "Bone Mapping"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.animate_anyone
        row = layout.row()
        row.label(text=settings.preset_label or "No armature", icon="OUTLINER_OB_ARMATURE")
        row.operator("animate_anyone.refresh_mapping", text="", icon="FILE_REFRESH")
        layout.prop(settings, "show_hand_mapping")
        layout.template_list(
            "ANIMATE_UL_bone_map", "", settings, "bone_map", settings, "bone_map_index", rows=8
        )
        item = settings.bone_map[settings.bone_map_index] if 0 <= settings.bone_map_index < len(settings.bone_map) else None
        if item is not None:
            col = layout.column(align=True)
            col.prop(item, "kind")
            if item.kind == "OFFSET":
                col.prop(item, "offset")
            elif item.kind == "MIDPOINT":
                col.prop(item, "end", text="First End")
                if settings.armature is not None:
                    col.prop_search(item, "bone2", settings.armature.data, "bones")
                else:
                    col.prop(item, "bone2")
                col.prop(item, "end2")
        unmapped = mapping.unmapped_keypoints(settings, include_hands=settings.draw_hands)
        if unmapped:
            col = layout.column(align=True)
            col.label(text=f"Not mapped ({len(unmapped)}): drawn as missing", icon="INFO")
            for start in range(0, min(len(unmapped), 24), 4):
                col.label(text=", ".join(unmapped[start:start + 4]))
            if len(unmapped) > 24:
                col.label(text=f"... and {len(unmapped) - 24} more")
        if settings.armature is not None:
            missing = mapping.missing_bones(settings, settings.armature)
            if missing:
                col = layout.column(align=True)
                col.label(text="Bones the armature does not have:", icon="ERROR")
                for line in missing[:8]:
                    col.label(text=line)


class ANIMATE_PT_skeleton(AnimateSubPanel, Panel):
    bl_idname = "ANIMATE_PT_skeleton"
    bl_label = "Skeleton"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.animate_anyone
        row = layout.row(align=True)
        row.prop(settings, "draw_hands", toggle=True)
        row.prop(settings, "draw_face", toggle=True)
        row.prop(settings, "occlusion", toggle=True)
        layout.prop(settings, "neck")


class ANIMATE_PT_reference(AnimateSubPanel, Panel):
    bl_idname = "ANIMATE_PT_reference"
    bl_label = "Reference"

    def draw(self, context):
        layout = split_layout(self.layout)
        settings = context.scene.animate_anyone
        layout.prop(settings, "reference_source", expand=True)
        if settings.reference_source == "RENDER":
            layout.prop(settings, "reference_frame")
            layout.prop(settings, "reference_engine")
        else:
            layout.prop(settings, "reference_image")


class ANIMATE_PT_generation(AnimateSubPanel, Panel):
    bl_idname = "ANIMATE_PT_generation"
    bl_label = "Generation"

    def draw(self, context):
        layout = split_layout(self.layout)
        settings = context.scene.animate_anyone
        col = layout.column(align=True)
        col.prop(settings, "steps")
        col.prop(settings, "guidance_scale")
        col.prop(settings, "seed")
        col = layout.column(align=True)
        col.prop(settings, "context_frames")
        col.prop(settings, "context_overlap")
        col.prop(settings, "context_schedule")
        layout.prop(settings, "scheduler")
        layout.prop(settings, "retarget")


class ANIMATE_PT_output(AnimateSubPanel, Panel):
    bl_idname = "ANIMATE_PT_output"
    bl_label = "Output"

    def draw(self, context):
        layout = split_layout(self.layout)
        settings = context.scene.animate_anyone
        layout.prop(settings, "output_dir")
        layout.prop(settings, "import_mode")
        if settings.import_mode == "PLANE" and effective_camera(context.scene, settings) is None:
            layout.label(text="A plane needs a camera", icon="ERROR")


# ---------------------------------------------------------------- status bar


def draw_status(self, context) -> None:
    """Appended to the status bar: progress of a running Generate, seen from any editor."""
    active = generation.ACTIVE
    if active is None or active.finished:
        return
    progress = active.progress
    layout = self.layout
    if hasattr(layout, "progress"):
        layout.progress(factor=progress.factor(), type="BAR", text=f"Animate: {progress.headline()}")
    else:
        layout.label(text=f"Animate: {progress.headline()}")


CLASSES = (
    ANIMATE_UL_bone_map,
    ANIMATE_PT_main,
    ANIMATE_PT_mapping,
    ANIMATE_PT_skeleton,
    ANIMATE_PT_reference,
    ANIMATE_PT_generation,
    ANIMATE_PT_output,
)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    _remove_status()
    bpy.types.STATUSBAR_HT_header.append(draw_status)


def _remove_status() -> None:
    # remove() of a function that is not there raises; unregister must work after a failed register.
    try:
        bpy.types.STATUSBAR_HT_header.remove(draw_status)
    except ValueError:
        pass


def unregister() -> None:
    _remove_status()
    _unregister_classes()
