"""The add-on's buttons: Preview Skeleton, Export Job, Generate (and Cancel), Import Result,
Refresh Mapping, Stop Backend.

Each operator turns an AddonError (or a pose_bridge error) into a report with what to do
and returns CANCELLED; nothing is left half-done in the scene.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bpy
import numpy as np
from bpy.props import EnumProperty, StringProperty
from bpy.types import Operator

from pose_bridge.errors import PoseBridgeError
from pose_bridge.settings import GENERATION_SETTINGS, RUNTIME_SETTINGS

from ..connection import client as backend_client
from ..connection import generation, inprocess
from ..errors import AddonError
from . import mapping, preferences
from .properties import IMPORT_MODES, add_setting_properties, effective_camera
from .scene_options import export_options, output_root

log = logging.getLogger(__name__)

PREVIEW_IMAGE_NAME = "Animate Skeleton Preview"
# Timers of running modal Generate operators, removed on unregister if still there.
_TIMERS: list = []
USER_ERRORS = (AddonError, PoseBridgeError)


def make_runner(prefs):
    """In-process when chosen and possible; otherwise the shared local server."""
    if prefs is not None and prefs.run_in_process and inprocess.available():
        return inprocess.shared_runner()
    python = preferences.resolved_backend_python(prefs)
    if not python:
        raise AddonError(
            "No backend is set up: press Set up Backend in Preferences > Add-ons > Animate Anyone, "
            "or set 'Backend Python' to a Python with animate_backend installed"
        )
    return backend_client.shared_client(python)


def _tag_redraw(context) -> None:
    wm = context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PROPERTIES", "STATUSBAR"):
                area.tag_redraw()


def rgb_to_image(name: str, rgb: np.ndarray):
    """An (H, W, 3) uint8 array into a Blender image (made or resized), returned."""
    height, width = rgb.shape[:2]
    image = bpy.data.images.get(name)
    if image is not None and tuple(image.size) != (width, height):
        image.scale(width, height)
    if image is None:
        image = bpy.data.images.new(name, width, height, alpha=False)
    rgba = np.ones((height, width, 4), dtype=np.float32)
    rgba[..., :3] = rgb.astype(np.float32) / 255.0
    # Blender's pixel rows go bottom to top.
    image.pixels.foreach_set(rgba[::-1].ravel())
    image.update()
    return image


# ---------------------------------------------------------------- operators


class ANIMATE_ANYONE_OT_preview_skeleton(Operator):
    """Draw the current frame's skeleton, as the model will see it, into the image "Animate Skeleton Preview\""""

    bl_idname = "animate_anyone.preview_skeleton"
    bl_label = "Preview Skeleton"
    bl_options = {"REGISTER"}

    def execute(self, context):
        from ..export.job_export import preview_skeleton

        scene = context.scene
        try:
            options = export_options(scene, preferences.get_preferences(context), for_frame=scene.frame_current)
            rgb = preview_skeleton(scene, options, scene.frame_current)
        except USER_ERRORS as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        image = rgb_to_image(PREVIEW_IMAGE_NAME, rgb)
        # Show it in an image editor if one is open.
        for area in context.screen.areas if context.screen else ():
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
        self.report({"INFO"}, f"Skeleton of frame {scene.frame_current} drawn into image '{image.name}'")
        return {"FINISHED"}


def given_settings(operator) -> dict:
    """The generation settings a script gave the operator (the others come from the scene)."""
    return {name: getattr(operator, name) for name in (*GENERATION_SETTINGS, *RUNTIME_SETTINGS)
            if operator.properties.is_property_set(name)}


class ANIMATE_ANYONE_OT_export_job(Operator):
    """Write a job folder (skeletons, reference still, settings) without generating; runnable later with `python -m animate_backend run`"""

    bl_idname = "animate_anyone.export_job"
    bl_label = "Export Job"
    bl_options = {"REGISTER"}

    directory: StringProperty(name="Job Folder", subtype="DIR_PATH", description="Empty: a new folder in the output folder")

    def execute(self, context):
        from ..export.job_export import export_job

        scene = context.scene
        try:
            options = export_options(scene, preferences.get_preferences(context), overrides=given_settings(self))
            job_dir = Path(bpy.path.abspath(self.directory)) if self.directory else generation.new_job_dir(
                output_root(scene), scene.name
            )
            paths = export_job(scene, options, job_dir)
        except USER_ERRORS as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        scene.animate_anyone.last_job_dir = str(paths.root)
        self.report({"INFO"}, f"Job written to {paths.root}")
        return {"FINISHED"}


class ANIMATE_ANYONE_OT_generate(Operator):
    """Write the job, run it on the backend and import the result; Esc cancels (finished frames are kept)"""

    bl_idname = "animate_anyone.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    _timer = None
    _controller = None  # the GenerateController this modal run drives

    @classmethod
    def poll(cls, context):
        return generation.ACTIVE is None or generation.ACTIVE.finished

    def start_controller(self, context) -> generation.GenerateController:
        """Build and start the controller; AddonError when the scene or the setup cannot work."""
        scene = context.scene
        settings = scene.animate_anyone
        prefs = preferences.get_preferences(context)
        options = export_options(scene, prefs, overrides=given_settings(self))
        job_dir = generation.new_job_dir(output_root(scene), scene.name)
        runner = make_runner(prefs)
        controller = generation.GenerateController(
            scene, options, job_dir, runner, import_mode=settings.import_mode,
            camera=effective_camera(scene, settings),
        )
        controller.start()  # the job is written by the controller's poll(), a few frames at a time
        generation.ACTIVE = controller  # shown in the panel and status bar from now on
        return controller

    def invoke(self, context, event):
        if context.window is None:
            # No window, no event loop (background mode, the bpy module): run synchronously.
            return self.execute(context)
        try:
            self._controller = self.start_controller(context)
        except USER_ERRORS as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        _TIMERS.append(self._timer)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        # Without an event loop (scripts, command line) there is no modal: run to the end here.
        try:
            controller = self.start_controller(context)
        except USER_ERRORS as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        controller.wait()
        return self._finish(context, controller)

    def modal(self, context, event):
        controller = self._controller
        if generation.ACTIVE is not controller:
            # The add-on was unregistered (or reset) under the running operator.
            return self._stop_timer(context, {"CANCELLED"})
        if event.type == "ESC" and event.value == "PRESS":
            controller.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}  # Blender stays usable while the backend works
        controller.poll()
        _tag_redraw(context)
        if not controller.finished:
            return {"PASS_THROUGH"}
        self._stop_timer(context, None)
        return self._finish(context, controller)

    def _stop_timer(self, context, result):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            if self._timer in _TIMERS:
                _TIMERS.remove(self._timer)
            self._timer = None
        return result

    def _finish(self, context, controller):
        if controller.paths is not None:  # None when cancelled or failed while writing the job
            controller.scene.animate_anyone.last_job_dir = str(controller.paths.root)
        try:
            imported = controller.finish()
        except USER_ERRORS as exc:
            self.report({"ERROR"}, f"{controller.message}; importing failed: {exc}")
            return {"CANCELLED"}
        _tag_redraw(context)
        if controller.state == "failed":
            self.report({"ERROR"}, controller.message)
            return {"CANCELLED"}
        where = f" (imported as {imported.name})" if imported is not None else ""
        self.report({"WARNING"} if controller.state == "cancelled" else {"INFO"}, controller.message + where)
        return {"FINISHED"} if controller.state == "done" else {"CANCELLED"}


class ANIMATE_ANYONE_OT_cancel_generate(Operator):
    """Stop generating; frames finished so far stay in the job folder"""

    bl_idname = "animate_anyone.cancel_generate"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return generation.ACTIVE is not None and not generation.ACTIVE.finished

    def execute(self, context):
        generation.ACTIVE.cancel()
        return {"FINISHED"}


class ANIMATE_ANYONE_OT_import_result(Operator):
    """Import the video of a job generated earlier (or elsewhere)"""

    bl_idname = "animate_anyone.import_result"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Job Folder", subtype="DIR_PATH")
    mode: EnumProperty(name="Import As", items=[m for m in IMPORT_MODES if m[0] != "NONE"], default="PLANE")

    def invoke(self, context, event):
        settings = context.scene.animate_anyone
        if settings.import_mode != "NONE":
            self.mode = settings.import_mode
        if not self.directory and settings.last_job_dir:
            self.directory = settings.last_job_dir
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        from ..results.importing import import_result

        scene = context.scene
        if not self.directory:
            self.report({"ERROR"}, "Choose a job folder (the one holding job.json)")
            return {"CANCELLED"}
        try:
            made = import_result(
                scene, bpy.path.abspath(self.directory), self.mode,
                camera=effective_camera(scene, scene.animate_anyone),
            )
        except USER_ERRORS as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {made.name}")
        return {"FINISHED"}


class ANIMATE_ANYONE_OT_refresh_mapping(Operator):
    """Detect the armature's bone-name preset again and refill the mapping table (edits are lost)"""

    bl_idname = "animate_anyone.refresh_mapping"
    bl_label = "Refresh Mapping"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.animate_anyone
        if settings.armature is None:
            self.report({"ERROR"}, "No armature chosen: pick the character's armature in the Animate tab")
            return {"CANCELLED"}
        match = mapping.fill_from_preset(settings, settings.armature)
        unmapped = mapping.unmapped_keypoints(settings, include_hands=settings.draw_hands)
        if match is None or not any(item.bone for item in settings.bone_map):
            self.report({"WARNING"}, f"No preset matches the bones of {settings.armature.name}: map them by hand")
        else:
            self.report({"INFO"}, f"{settings.preset_label}: {len(unmapped)} keypoints not mapped")
        return {"FINISHED"}


class ANIMATE_ANYONE_OT_stop_backend(Operator):
    """Stop the backend process (frees the memory its model holds; it starts again on the next Generate)"""

    bl_idname = "animate_anyone.stop_backend"
    bl_label = "Stop Backend"

    @classmethod
    def poll(cls, context):
        return generation.ACTIVE is None or generation.ACTIVE.finished

    def execute(self, context):
        backend_client.shutdown_shared()
        inprocess.shutdown_shared()
        return {"FINISHED"}


# The scripting API: bpy.ops.animate_anyone.generate(steps=30, seed=4) uses those settings for
# this run and the scene's Animate tab for the rest (as bpy.ops.export_scene.gltf takes its options).
for _operator in (ANIMATE_ANYONE_OT_generate, ANIMATE_ANYONE_OT_export_job):
    add_setting_properties(_operator, (*GENERATION_SETTINGS, *RUNTIME_SETTINGS), options={"SKIP_SAVE"})

CLASSES = (
    ANIMATE_ANYONE_OT_preview_skeleton,
    ANIMATE_ANYONE_OT_export_job,
    ANIMATE_ANYONE_OT_generate,
    ANIMATE_ANYONE_OT_cancel_generate,
    ANIMATE_ANYONE_OT_import_result,
    ANIMATE_ANYONE_OT_refresh_mapping,
    ANIMATE_ANYONE_OT_stop_backend,
)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()


def unregister() -> None:
    # A run in progress stops with the add-on: its process must not outlive it.
    if generation.ACTIVE is not None and not generation.ACTIVE.finished:
        generation.ACTIVE.cancel()
    generation.ACTIVE = None
    wm = bpy.context.window_manager
    while _TIMERS:
        timer = _TIMERS.pop()
        if wm is not None:
            try:
                wm.event_timer_remove(timer)
            except (ReferenceError, ValueError):
                pass  # already gone with its window
    backend_client.shutdown_shared(timeout=3.0)
    inprocess.shutdown_shared()
    _unregister_classes()
