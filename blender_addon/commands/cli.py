"""Generate a video for one shot from the command line, with no user interface.

Inside Blender (the script ships with the add-on; --python-exit-code makes an unexpected
Python error exit non-zero too, the script itself exits 1 on every known failure):

    blender -b shot.blend --python-exit-code 1 -P /path/to/animate_anyone/cli.py -- \\
        --out /renders/sh010 --model /models/animate_anyone --frames 1-48 --import plane --save

(--python-exit-code must come before -P; everything after -- is this script's. An
installed extension's folder is e.g. ~/.config/blender/4.2/extensions/user_default/
animate_anyone/ on Linux. The backend's Python is --backend-python, else
$ANIMATE_BACKEND_PYTHON, else the add-on preference, else Blender's own Python when it
has torch. --scene-settings starts from what the Animate tab saved in the file.)

Without Blender, through the bpy module (pip install bpy):

    python -m blender_addon.cli shot.blend -- --out /renders/sh010 --model tiny --frames 1-3

It exports the job folder (--out), runs the backend synchronously
(`<backend python> -m animate_backend run`, see connection/runner.py), optionally imports the
video into the scene and saves the .blend. Farms that generate on other machines split
this in two: --export-only writes the job folder, and after generation --import-only
imports it (--save-as PATH keeps the shot itself untouched). Exit code 0 on success, 1
with a one-line "error: ..." on stderr on failure, 2 for bad arguments. The last line on
stdout names the video written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pose_bridge.errors import PoseBridgeError

from ..errors import AddonError
from .shot_options import add_job_arguments, given_options, import_mode_of, options_from_args

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blender -b SHOT.blend -P cli.py --",
        description="Generate an Animate Anyone video of one shot's armature motion.",
    )
    parser.add_argument("blend", nargs="?", help="the .blend file (with `python -m blender_addon.cli`; "
                                                 "inside Blender the file Blender opened)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the job folder to write (the video goes into DIR/out)")
    add_job_arguments(parser)
    # For farms that generate elsewhere (Flamenco's GPU workers): bring an already generated job
    # into the shot, and save the result beside the shot instead of over it.
    parser.add_argument("--import-only", action="store_true",
                        help="import the result already in DIR (no export, no backend run); needs --import")
    parser.add_argument("--save-as", metavar="PATH", help="save a copy of the .blend at PATH afterwards")
    return parser


# ---------------------------------------------------------------- one shot


@dataclass
class ShotOutcome:
    """What one shot's run produced."""

    job_dir: Path
    result: dict[str, Any] | None  # out/result.json; None with --export-only
    imported: str = ""  # name of the object / strip / node made by --import


def open_blend(path: str | Path) -> None:
    import bpy

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise AddonError(f"{path} does not exist; give the path of a .blend file")
    try:
        bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False)
    except RuntimeError as exc:
        raise AddonError(f"cannot open {path} ({exc}); is it a .blend file?") from exc


def pick_scene(name: str | None):
    """The scene called name (made the active one), or the active scene."""
    import bpy

    if not name:
        return bpy.context.scene
    scene = bpy.data.scenes.get(name)
    if scene is None:
        raise AddonError(f"there is no scene '{name}'; scenes in this file: {', '.join(bpy.data.scenes.keys())}")
    if bpy.context.window is not None:
        bpy.context.window.scene = scene
    return scene


def label_untrained(imported: Any, result: dict[str, Any] | None) -> None:
    """Say in the imported thing's name that it came from the untrained tiny model."""
    if imported is None or not result or not result.get("untrained"):
        return
    name = getattr(imported, "name", "")
    if name and "UNTRAINED" not in name:
        imported.name = f"{name} (UNTRAINED)"


def run_shot(
    scene,
    options,
    job_dir: str | Path,
    *,
    import_mode: str = "none",
    save: bool = False,
    export_only: bool = False,
    backend_python: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ShotOutcome:
    """Export the job, run the backend, import the result, save: the whole shot, synchronously."""
    import bpy

    from ..connection import runner as backend_runner
    from ..export.job_export import export_job

    if export_only and import_mode != "none":
        raise AddonError("--import needs a generated result; leave out --export-only")
    paths = export_job(scene, options, job_dir)
    outcome = ShotOutcome(paths.root, None)
    if not export_only:
        outcome.result = backend_runner.run_job(paths.root, backend_python, on_line=on_line)
        if outcome.result.get("untrained"):
            log.warning("the video was made by the UNTRAINED tiny pipeline: noise, not your character")
    if import_mode != "none":
        from ..results.importing import import_result

        camera = bpy.data.objects.get(options.camera) if options.camera else scene.camera
        imported = import_result(scene, paths.root, import_mode.upper(), camera=camera)
        label_untrained(imported, outcome.result)
        outcome.imported = getattr(imported, "name", "") or ""
    if save:
        if not bpy.data.filepath:
            raise AddonError("--save needs a .blend that was saved before (this one has no file name)")
        bpy.ops.wm.save_mainfile(filepath=bpy.data.filepath)
    return outcome


def import_shot(scene, job_dir: str | Path, import_mode: str, camera_name: str = "") -> ShotOutcome:
    """Import the result of a job generated before (--import-only): no export, no backend run."""
    import json

    import bpy

    from pose_bridge.job import JobPaths

    from ..results.importing import import_result

    paths = JobPaths(Path(job_dir).expanduser().resolve())
    if import_mode == "none":
        raise AddonError("--import-only needs --import plane, strip or compositor")
    try:
        result = json.loads(paths.result.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AddonError(
            f"{paths.result} is missing or unreadable: generate the job first "
            f"(python -m animate_backend run {paths.root})"
        ) from exc
    camera = bpy.data.objects.get(camera_name) if camera_name else scene.camera
    if camera_name and camera is None:
        raise AddonError(f"there is no object called '{camera_name}'; pick the camera to import the result for")
    imported = import_result(scene, paths.root, import_mode.upper(), camera=camera)
    label_untrained(imported, result)
    return ShotOutcome(paths.root, result, getattr(imported, "name", "") or "")


def save_open_file() -> None:
    import bpy

    if not bpy.data.filepath:
        raise AddonError("--save needs a .blend that was saved before (this one has no file name)")
    bpy.ops.wm.save_mainfile(filepath=bpy.data.filepath)


def save_copy(path: str | Path) -> Path:
    """Save the open file's content at path (the open file itself stays as it is on disk)."""
    import bpy

    path = Path(path).expanduser().resolve()
    if path.suffix != ".blend":
        raise AddonError(f"--save-as takes a .blend path, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True)
    return path


def one_line(exc: BaseException) -> str:
    """An error as one line: the lines of a multi-line message (a list of problems) joined with '; '."""
    lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def backend_printer(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda line: None
    return lambda line: print(f"backend: {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (0 ok, 1 failed, 2 bad arguments)."""
    if argv is None:
        argv = sys.argv[1:]
        if "--" in argv:  # python -m blender_addon.cli shot.blend -- --out DIR
            argv.remove("--")
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_options(parser, args)
    setup_logging(args.quiet)
    try:
        if args.blend:
            open_blend(args.blend)
        scene = pick_scene(args.scene)
        if args.import_only:
            if args.export_only:
                raise AddonError("--import-only and --export-only exclude each other: leave one out")
            outcome = import_shot(scene, args.out, import_mode_of(args, scene, given), args.camera)
            if args.save:
                save_open_file()
        else:
            options = options_from_args(args, scene, given)
            outcome = run_shot(
                scene, options, args.out, import_mode=import_mode_of(args, scene, given), save=args.save,
                export_only=args.export_only, backend_python=args.backend_python,
                on_line=backend_printer(args.quiet),
            )
        if args.save_as:
            print(f"saved: {save_copy(args.save_as)}", flush=True)
    except (AddonError, PoseBridgeError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # a bug: show it, but still exit non-zero with one line last
        log.exception("unexpected failure")
        print(f"error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    if outcome.result is None:
        print(f"job written: {outcome.job_dir}", flush=True)
    else:
        video = outcome.result.get("video")
        where = outcome.job_dir / video if video else outcome.job_dir / "out" / "frames"
        note = " (UNTRAINED model)" if outcome.result.get("untrained") else ""
        print(f"done: {where}{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
