"""The options of one shot, shared by the command line (cli.py) and the batch (batch.py).

add_job_arguments declares them on a parser (the generation settings come from
pose_bridge.settings); options_from_args turns parsed arguments, the add-on preferences and,
with --scene-settings, the scene's Animate tab into the ExportOptions of one shot.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

from pose_bridge.cli_args import add_setting_arguments
from pose_bridge.settings import GENERATION_SETTINGS, MAX_OUTPUT_SIDE, RUNTIME_SETTINGS, default_of

from ..errors import AddonError

log = logging.getLogger(__name__)

IMPORT_CHOICES = ("plane", "strip", "compositor", "none")


def frame_range(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"\s*(-?\d+)\s*(?:(?:-|:|\.\.)\s*(-?\d+))?\s*", text)
    if not found:
        raise argparse.ArgumentTypeError(f"frames must look like 1-48 (or one frame, 12), got {text!r}")
    start = int(found.group(1))
    end = int(found.group(2)) if found.group(2) is not None else start
    return start, end


def size(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not found:
        raise argparse.ArgumentTypeError(f"size must look like 512x768, got {text!r}")
    width, height = int(found.group(1)), int(found.group(2))
    if not (8 <= width <= MAX_OUTPUT_SIDE and 8 <= height <= MAX_OUTPUT_SIDE):
        raise argparse.ArgumentTypeError(f"width and height must be between 8 and {MAX_OUTPUT_SIDE}, got {text!r}")
    return width, height


def mapping_item(text: str) -> tuple[str, Any]:
    """KEYPOINT=BONE, KEYPOINT=BONE@tail, KEYPOINT= (unmap)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--map takes KEYPOINT=BONE[@head|@tail], got {text!r}")
    key, bone = text.split("=", 1)
    end = "head"
    if bone.endswith(("@head", "@tail")):
        bone, end = bone[:-5], bone[-4:]
    return key.strip(), (bone, end) if bone else None


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one shot's job, shared by cli and batch."""
    scene = parser.add_argument_group("scene")
    scene.add_argument("--scene", help="scene to use (default: the file's active scene)")
    scene.add_argument("--scene-settings", action="store_true",
                       help="start from the settings saved in the scene's Animate tab (armature, camera, frames, "
                            "size, bone mapping, reference, generation, import); options given here win")
    scene.add_argument("--armature", default="", help="armature object (default: the scene's only armature)")
    scene.add_argument("--camera", default="", help="camera object (default: the scene's camera)")
    scene.add_argument("--frames", type=frame_range, metavar="A-B", help="frame range (default: the scene's)")
    scene.add_argument("--size", type=size, metavar="WxH",
                       help="output size, multiples of 8 (default: the render size rounded to multiples of 8)")
    scene.add_argument("--preset", default="auto", help="bone-name preset: auto (detect), none, or a preset name")
    scene.add_argument("--map", type=mapping_item, action="append", default=[], metavar="KEYPOINT=BONE[@tail]",
                       help="map a keypoint to a bone (left_wrist=hand.L, right_hand.index_1=f_index.01.R@tail; "
                            "KEYPOINT= leaves it unmapped); repeatable")
    add_setting_arguments(scene, ("draw_hands", "draw_face"))
    scene.add_argument("--occlusion", action="store_true",
                       help="drop joints hidden behind the character's own meshes (ray casting)")
    scene.add_argument("--neck", default="shoulders", choices=("shoulders", "bone"),
                       help="neck point: the middle of the shoulders as DWPose draws it (default), or the rig's "
                            "neck bone")
    ref = parser.add_argument_group("reference still")
    ref.add_argument("--image", default="", metavar="PATH", help="use this image as the reference instead of a render")
    ref.add_argument("--image-pose", default="", metavar="JSON",
                     help="the image's skeleton (OpenPose JSON), needed to retarget onto an image")
    ref.add_argument("--reference-frame", type=int, help="frame to render the reference at (default: the first)")
    ref.add_argument("--engine", default="SCENE", type=str.upper, choices=("SCENE", "WORKBENCH", "CYCLES", "EEVEE"),
                     help="engine of the reference render (default: the scene's)")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--model", default=None, metavar="DIR",
                     help='pipeline folder (default: the add-on preference); "tiny" = the untrained test model')
    add_setting_arguments(gen, [name for name in GENERATION_SETTINGS if name not in ("draw_hands", "draw_face")])
    # None: the add-on preference's (or Automatic without one).
    add_setting_arguments(gen, RUNTIME_SETTINGS, defaults={name: None for name in RUNTIME_SETTINGS},
                          default_notes={name: "the add-on preference" for name in RUNTIME_SETTINGS})
    gen.add_argument("--backend-python", default=None, metavar="PYTHON",
                     help="interpreter of the backend (default: $ANIMATE_BACKEND_PYTHON, the add-on preference, "
                          "or this one when animate_backend imports here)")
    gen.add_argument("--export-only", action="store_true", help="write the job folder, do not run the backend")
    out = parser.add_argument_group("result")
    out.add_argument("--import", dest="import_mode", default="none", type=str.lower, choices=IMPORT_CHOICES,
                     help="bring the video into the scene (default: none)")
    out.add_argument("--save", action="store_true", help="save the .blend afterwards (with the imported result)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not show the backend's log")


def addon_preferences():
    try:
        from ..ui.preferences import get_preferences
        return get_preferences()
    except (ImportError, AttributeError, KeyError):
        return None


def given_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The options given on the command line (those whose value differs from the default)."""
    return {dest for dest, value in vars(args).items() if value != parser.get_default(dest)}


def panel_options(scene, args: argparse.Namespace):
    """ExportOptions from the scene's Animate tab (registering the add-on's settings if needed)."""
    from types import SimpleNamespace

    if not hasattr(scene, "animate_anyone"):
        from .. import register

        register()  # makes the settings saved in the .blend readable as scene.animate_anyone
    from ..ui.scene_options import export_options

    prefs = addon_preferences()
    # The model, device and precision live in the preferences; the command line may stand in.
    stand_in = SimpleNamespace(
        model_dir=args.model or (prefs.model_dir if prefs is not None else ""),
        **{name: getattr(args, name) or (getattr(prefs, name) if prefs is not None else default_of(name))
           for name in RUNTIME_SETTINGS},
    )
    return export_options(scene, stand_in)


def options_from_args(args: argparse.Namespace, scene=None, given: set[str] | None = None):
    """ExportOptions of the parsed arguments (the add-on preferences fill in model, device, precision).

    With --scene-settings the scene's Animate-tab settings are the starting point and only
    the options in `given` (default: all) replace them.
    """
    from ..export.job_export import ExportOptions

    prefs = addon_preferences()
    model = args.model or (getattr(prefs, "model_dir", "") if prefs is not None else "")
    if not model and not getattr(args, "scene_settings", False) and not getattr(args, "export_only", False):
        raise AddonError(
            'no model given: pass --model DIR (an Animate Anyone pipeline folder), or --model tiny for the '
            'untrained test pipeline'
        )
    if getattr(args, "scene_settings", False) and scene is not None:
        options = panel_options(scene, args)
        chosen = set(vars(args)) if given is None else given
    else:
        options = ExportOptions()
        for name in RUNTIME_SETTINGS:
            setattr(options.job, name, getattr(prefs, name, default_of(name)) if prefs is not None else default_of(name))
        chosen = set(vars(args))
    if model and ("model" in chosen or not getattr(args, "scene_settings", False)):
        options.job.model = model if model == "tiny" else str(Path(model).expanduser())
    elif not model and getattr(args, "export_only", False) and not getattr(args, "scene_settings", False):
        # Exporting needs no model, but job.json names one: say which, and how to change it.
        log.warning('no --model given: job.json names the untrained test pipeline "tiny"; set its "model" '
                    "to your pipeline folder (or export again with --model DIR) before running the job")

    def take(dest: str) -> bool:
        return dest in chosen and getattr(args, dest, None) not in (None, "", [])

    if take("armature"):
        options.armature = args.armature
    if take("camera"):
        options.camera = args.camera
    if take("frames"):
        options.frame_start, options.frame_end = args.frames
    if take("size"):
        options.width, options.height = args.size
    if take("preset"):
        options.preset = args.preset
    if take("map"):
        options.mapping = {**options.mapping, **dict(args.map)}
    if "occlusion" in chosen:
        options.occlusion = args.occlusion
    if "neck" in chosen:
        options.neck = args.neck
    if take("image"):
        options.reference, options.image_path = "image", args.image
    if take("image_pose"):
        options.reference_pose_path = args.image_pose
    if take("reference_frame"):
        options.reference_frame = args.reference_frame
    if take("engine"):
        options.engine = args.engine
    for name in (*GENERATION_SETTINGS, *RUNTIME_SETTINGS):
        if take(name) or (name in chosen and isinstance(getattr(args, name), bool)):
            setattr(options.job, name, getattr(args, name))
    return options


def import_mode_of(args: argparse.Namespace, scene, given: set[str] | None) -> str:
    """--import, or with --scene-settings the Animate tab's "Import As" when --import is not given."""
    if getattr(args, "scene_settings", False) and (given is not None and "import_mode" not in given):
        if args.export_only:
            return "none"  # nothing generated, nothing to import
        settings = getattr(scene, "animate_anyone", None)
        if settings is not None:
            return settings.import_mode.lower()
    return args.import_mode
