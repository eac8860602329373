"""The main job, end to end on a scene made here: `python -m blender_addon.commands.demo --out demo_output`.

1. builds the demo shot (demo_scene: a Rigify-named rig with a skinned body, walking and
   waving) and saves it as demo_output/demo.blend;
2. exports the job folder demo_output/job: skeletons from the armature through the
   camera, the reference still rendered with Workbench;
3. runs the backend on it (`python -m animate_backend run`, the model folder given with
   --model, else the tiny UNTRAINED pipeline, which makes noise, not a character);
4. imports the video as a plane in front of the camera and saves demo.blend again.

The video is demo_output/job/out/video.mp4. Runs through the bpy module; no Blender needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pose_bridge.errors import PoseBridgeError
from pose_bridge.settings import JobSettings

from . import cli
from ..errors import AddonError

UNTRAINED_BANNER = (
    "NOTE: no --model given, so the demo uses the tiny UNTRAINED pipeline (random weights).\n"
    "      Its video shows that the whole chain runs, not your character. For real output pass\n"
    "      --model DIR with an Animate Anyone pipeline folder (see `python -m animate_backend --help`)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blender_addon.commands.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", metavar="DIR", help="output folder (default demo_output)")
    parser.add_argument("--model", default="tiny", metavar="DIR",
                        help='pipeline folder (default "tiny": the small untrained pipeline)')
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default 4 with the tiny pipeline, 20 with a real model)")
    parser.add_argument("--frames", type=int, default=12, help="length of the shot in frames (default 12)")
    parser.add_argument("--size", type=cli._size, default=None, metavar="WxH",
                        help="output size (default 96x128 with the tiny pipeline, 512x768 with a real model)")
    parser.add_argument("--engine", default=None, type=str.upper, choices=("WORKBENCH", "CYCLES", "EEVEE"),
                        help="engine of the reference still (default WORKBENCH with the tiny pipeline, "
                             "CYCLES with a real model)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--backend-python", default=None, metavar="PYTHON", help="interpreter of the backend")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not show the backend's log")
    return parser


def run_demo(args: argparse.Namespace) -> dict:
    import bpy

    from . import demo_scene
    from ..export.job_export import ExportOptions

    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    blend = out / "demo.blend"
    untrained = args.model == "tiny"
    steps = args.steps if args.steps is not None else (4 if untrained else 20)
    width, height = args.size or ((96, 128) if untrained else (512, 768))
    engine = args.engine or ("WORKBENCH" if untrained else "CYCLES")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0  # no demo.blend1 backups of a generated file
    scene = demo_scene.build_demo_scene(width=width, height=height, frames=args.frames)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))

    job = JobSettings(
        model=args.model if untrained else str(Path(args.model).expanduser().resolve()),
        steps=steps,
        context_frames=min(24, args.frames),
        context_overlap=min(4, max(0, min(24, args.frames) - 1)),
        device=args.device,
        provenance={"demo": True},
    )
    options = ExportOptions(armature=demo_scene.ARMATURE, engine=engine, job=job)
    outcome = cli.run_shot(
        scene, options, out / "job", import_mode="plane", save=True,
        backend_python=args.backend_python, on_line=cli.backend_printer(args.quiet),
    )
    return {"blend": blend, "outcome": outcome, "steps": steps, "rig": demo_scene.ARMATURE}


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
    model = result.get("model", args.model)
    lines = [
        f"Animate Anyone demo finished in {time.monotonic() - started:.0f} s",
        f"  scene     {done['blend']}  (rig '{done['rig']}', {result.get('frames', '?')} frames)",
        f"  job       {job}  (job.json, poses.json, poses/*.png, reference.png)",
        f"  video     {video if video else job / 'out' / 'frames'}  "
        f"({result.get('width')}x{result.get('height')}, {result.get('fps')} fps, {done['steps']} steps)",
        f"  imported  plane '{outcome.imported}' in {done['blend'].name}",
        f"  model     {model}"
        + ("  -- UNTRAINED: random weights, noise instead of a character" if result.get("untrained") else ""),
    ]
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
