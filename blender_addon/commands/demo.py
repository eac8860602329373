"""The main job, end to end on a scene made here: `python -m blender_addon.commands.demo --out demo_output`.

1. builds the demo shot (demo_scene: a Rigify-named rig with a skinned body, walking and
   waving) and saves it as demo_output/demo.blend;
2. exports the job folder demo_output/job: skeletons from the armature through the
   camera, the reference still rendered with Workbench;
3. runs the backend on it (`python -m animate_backend run`) with our small demo model
   (demo_model/ in the repository: trained from scratch by `make train-demo` on this one
   character, 64x64; see demo_model/MODEL_CARD.md), or the model folder given with --model
   (real weights; --model tiny is the untrained test pipeline, which makes noise);
4. imports the video as a plane in front of the camera and saves demo.blend again.

The video is demo_output/job/out/video.mp4. Runs through the bpy module; no Blender needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pose_bridge.cli_args import whole
from pose_bridge.errors import PoseBridgeError
from pose_bridge.settings import JobSettings

from ..errors import AddonError
from . import cli, shot_options

# Our small demo model, committed with the repository (demo_model/MODEL_CARD.md).
DEMO_MODEL = Path(__file__).resolve().parents[2] / "demo_model"
DEMO_MODEL_LABEL = "our small demo model"
UNTRAINED_BANNER = (
    "NOTE: --model tiny is the UNTRAINED test pipeline (random weights).\n"
    "      Its video shows that the whole chain runs, not a character. Leave --model out for our\n"
    "      small demo model, or pass --model DIR with an Animate Anyone pipeline folder."
)


@dataclass(frozen=True)
class DemoDefaults:
    """What the demo does with each kind of model, when the command line does not say."""

    size: tuple[int, int]
    steps: int
    engine: str
    frames: int


# The demo model was trained on Workbench renders of this character at 64x64; the untrained
# pipeline only needs to run quickly; real weights work at their own 512x768.
DEFAULTS = {
    "demo": DemoDefaults(size=(64, 64), steps=20, engine="WORKBENCH", frames=24),
    "tiny": DemoDefaults(size=(96, 128), steps=4, engine="WORKBENCH", frames=12),
    "real": DemoDefaults(size=(512, 768), steps=20, engine="CYCLES", frames=24),
}


def model_kind(model: str) -> str:
    if model == "tiny":
        return "tiny"
    if Path(model).expanduser().resolve() == DEMO_MODEL:
        return "demo"
    return "real"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blender_addon.commands.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", metavar="DIR", help="output folder (default demo_output)")
    parser.add_argument("--model", default=str(DEMO_MODEL), metavar="DIR",
                        help=f"pipeline folder (default: {DEMO_MODEL_LABEL}, demo_model/); "
                             '"tiny" is the untrained test pipeline')
    parser.add_argument("--steps", type=whole(at_least=1), default=None,
                        help="denoising steps (default 20; 4 with the tiny pipeline)")
    parser.add_argument("--frames", type=whole(at_least=1), default=None,
                        help="length of the shot in frames (default 24; 12 with the tiny pipeline)")
    parser.add_argument("--size", type=shot_options.size, default=None, metavar="WxH",
                        help="output size (default 64x64 with the demo model, which knows no other; 96x128 with "
                             "the tiny pipeline, 512x768 with real weights)")
    parser.add_argument("--engine", default=None, type=str.upper, choices=("WORKBENCH", "CYCLES", "EEVEE"),
                        help="engine of the reference still (default WORKBENCH, as the demo model was trained "
                             "on; CYCLES with real weights)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--backend-python", default=None, metavar="PYTHON", help="interpreter of the backend")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not show the backend's log")
    return parser


def run_demo(args: argparse.Namespace) -> dict:
    import bpy

    from ..export import reference
    from ..export.job_export import ExportOptions
    from . import demo_scene

    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    blend = out / "demo.blend"
    kind = model_kind(args.model)
    if kind == "demo" and not (DEMO_MODEL / "model_index.json").is_file():
        raise AddonError(f"the demo model is missing from {DEMO_MODEL}; check out the repository again, or pass "
                         f"--model DIR (a pipeline folder) or --model tiny")
    defaults = DEFAULTS[kind]
    steps = args.steps or defaults.steps
    frames = args.frames or defaults.frames
    width, height = args.size or defaults.size
    engine = args.engine or defaults.engine

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0  # no demo.blend1 backups of a generated file
    scene = demo_scene.build_demo_scene(width=width, height=height, frames=frames)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))

    window = min(24, frames)
    job = JobSettings(
        model=args.model if kind == "tiny" else str(Path(args.model).expanduser().resolve()),
        steps=steps,
        context_frames=window,
        context_overlap=min(4, window - 1),
        device=args.device,
        provenance={"demo": True},
    )
    options = ExportOptions(armature=demo_scene.ARMATURE, engine=engine, job=job)
    shown = preview_frames(frames)
    # The demo model learned from renders of this very scene's character: the renders of the shot
    # are its ground truth, shown beside what it made (rendered before the result is imported).
    truth = [reference.render_still(scene, scene.camera, scene.frame_start + i, width, height, engine)
             for i in shown] if kind == "demo" else None
    outcome = cli.run_shot(
        scene, options, out / "job", import_mode="plane", save=True,
        backend_python=args.backend_python, on_line=cli.backend_printer(args.quiet),
    )
    if kind == "demo" and outcome.imported:
        # Say in the scene what made the video.
        imported = bpy.data.objects.get(outcome.imported)
        if imported is not None:
            imported.name = outcome.imported = f"{outcome.imported} ({DEMO_MODEL_LABEL})"
            bpy.ops.wm.save_mainfile(filepath=str(blend))
    preview = write_preview(outcome.job_dir, out / "preview.png", shown, truth)
    return {"blend": blend, "outcome": outcome, "steps": steps, "rig": demo_scene.ARMATURE, "kind": kind,
            "preview": preview}


def preview_frames(frames: int, count: int = 8) -> list[int]:
    """Up to `count` frame indices (0-based) spread evenly over the shot."""
    shown = min(count, frames)
    return sorted({round(i * (frames - 1) / max(1, shown - 1)) for i in range(shown)})


def write_preview(job_dir: Path, path: Path, shown: list[int], truth: list | None = None) -> Path:
    """One picture of the run, large enough to look at: the reference still, then for the frames
    shown the skeleton, the rendered truth (when given) and the generated frame, a row each."""
    import numpy as np

    from pose_bridge.image_io import read_image, write_png
    from pose_bridge.job import JobPaths

    paths = JobPaths(job_dir)
    reference_image = read_image(paths.reference)
    blank = np.full_like(reference_image, 255)
    rows = [[read_image(paths.skeletons / f"{i + 1:04d}.png") for i in shown]]
    if truth is not None:
        rows.append(list(truth))
    rows.append([read_image(paths.frame(i)) for i in shown])
    lines = [np.concatenate([reference_image if r == 0 else blank, *row], axis=1) for r, row in enumerate(rows)]
    sheet = np.concatenate(lines, axis=0)
    scale = max(1, 256 // reference_image.shape[0])  # nearest-neighbour: the pixels as the model made them
    write_png(path, sheet.repeat(scale, axis=0).repeat(scale, axis=1))
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.quiet)
    if args.model == "tiny":
        print(UNTRAINED_BANNER, file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        done = run_demo(args)
    except (AddonError, PoseBridgeError) as exc:
        print(f"error: {cli.one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    outcome, result = done["outcome"], done["outcome"].result or {}
    job = outcome.job_dir
    video = job / result["video"] if result.get("video") else None
    model = str(result.get("model", args.model))
    if done["kind"] == "demo":
        model = f"{model}  ({DEMO_MODEL_LABEL}: trained from scratch on this character only, 64x64; " \
                f"see {DEMO_MODEL / 'MODEL_CARD.md'})"
    lines = [
        f"Animate Anyone demo finished in {time.monotonic() - started:.0f} s",
        f"  scene     {done['blend']}  (rig '{done['rig']}', {result.get('frames', '?')} frames)",
        f"  job       {job}  (job.json, poses.json, poses/*.png, reference.png)",
        f"  video     {video if video else job / 'out' / 'frames'}  "
        f"({result.get('width')}x{result.get('height')}, {result.get('fps')} fps, {done['steps']} steps)",
        f"  imported  plane '{outcome.imported}' in {done['blend'].name}",
        f"  preview   {done['preview']}  (skeletons, "
        + ("rendered truth, " if done["kind"] == "demo" else "") + "generated frames)",
        f"  model     {model}"
        + ("  -- UNTRAINED: random weights, noise instead of a character" if result.get("untrained") else ""),
    ]
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
