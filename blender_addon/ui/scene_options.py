"""The scene's Animate tab as what an export needs: ExportOptions, checked before any work.

Operators (Preview, Export, Generate) and the command line's --scene-settings read a
scene's settings through here, so that all of them see the same checks and messages.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from pose_bridge.settings import GENERATION_SETTINGS, RUNTIME_SETTINGS, JobSettings, default_of

from ..errors import AddonError
from . import mapping
from .properties import effective_camera, effective_frame_range, effective_size


def model_setting(prefs) -> str:
    """The model the preferences name: "tiny" or an absolute folder; AddonError when none."""
    model = prefs.model_dir.strip() if prefs is not None else ""
    if not model:
        raise AddonError(
            "No model folder is set: choose one in Preferences > Add-ons > Animate Anyone "
            '(or type "tiny" for the small untrained test model)'
        )
    return model if model == "tiny" else bpy.path.abspath(model)


def check_scene(scene, check_range: bool = True) -> None:
    """The problems people hit first, each with what to do, before any work starts."""
    settings = scene.animate_anyone
    if settings.armature is None:
        raise AddonError("No armature chosen: pick the character's armature in the Animate tab")
    if settings.armature.name not in scene.objects:
        raise AddonError(f"The armature {settings.armature.name} is not in scene {scene.name}: link it or pick another")
    if effective_camera(scene, settings) is None:
        raise AddonError("The scene has no camera: add one (Add > Camera) or pick one in the Animate tab")
    start, end = effective_frame_range(scene, settings)
    if check_range and end < start:
        raise AddonError(f"The frame range {start}-{end} has no frames: set the end frame at or after the start")
    if len(settings.bone_map) == 0:
        mapping.fill_from_preset(settings, settings.armature)
    missing = mapping.missing_bones(settings, settings.armature)
    if missing:
        raise AddonError(
            "The bone mapping names bones the armature does not have: " + "; ".join(missing[:6])
            + ": fix them in Bone Mapping or press Refresh Mapping"
        )


def export_options(scene, prefs=None, for_frame: int | None = None, overrides: dict | None = None):
    """job_export.ExportOptions from the scene's settings and the add-on preferences.

    for_frame: only that frame (Preview Skeleton), which needs no model.
    overrides: generation settings that replace the scene's and the preferences' (an operator's
    own properties, given by a script).
    """
    from ..export.job_export import ExportOptions

    settings = scene.animate_anyone
    check_scene(scene, check_range=for_frame is None)
    start, end = effective_frame_range(scene, settings)
    if for_frame is not None:
        start = end = for_frame
    width, height, _note = effective_size(scene, settings)
    if settings.reference_source == "IMAGE" and not settings.reference_image:
        raise AddonError("Reference is set to an image file but no file is chosen: pick one in Reference")
    # The generation settings are the scene's properties of the same names (ui.properties makes
    # them from pose_bridge.settings); device and precision are the preferences'.
    job = JobSettings(**{name: getattr(settings, name) for name in GENERATION_SETTINGS})
    for name in RUNTIME_SETTINGS:
        setattr(job, name, getattr(prefs, name) if prefs is not None else default_of(name))
    for name, value in (overrides or {}).items():
        setattr(job, name, value)
    options = ExportOptions(
        armature=settings.armature.name,
        camera=effective_camera(scene, settings).name,
        frame_start=start,
        frame_end=end,
        width=width,
        height=height,
        # The table holds the whole mapping (filled from the detected preset, then edited).
        mapping=mapping.table_sources(settings),
        preset="none",
        occlusion=settings.occlusion,
        neck=settings.neck,
        reference="image" if settings.reference_source == "IMAGE" else "render",
        reference_frame=settings.reference_frame,
        engine=settings.reference_engine,
        image_path=bpy.path.abspath(settings.reference_image) if settings.reference_image else "",
        job=job,
    )
    if for_frame is None:
        options.job.model = model_setting(prefs)
    return options


def output_root(scene) -> Path:
    """The output folder as an absolute path; AddonError for // in an unsaved file."""
    folder = scene.animate_anyone.output_dir or "//animate_anyone/"
    if folder.startswith("//") and not bpy.data.filepath:
        raise AddonError(
            "The output folder is relative to the .blend file (//), which is not saved yet: "
            "save the file or choose an absolute output folder in Output"
        )
    return Path(bpy.path.abspath(folder))
