"""The job commands of `python -m animate_backend`: run, generate, serve.

    python -m animate_backend run JOB_DIR
    python -m animate_backend generate --model DIR|tiny --reference IMG --poses POSES --out VIDEO
        [--width W --height H --steps N --guidance G --seed S --context-frames N
         --context-overlap N --fps F --device auto|cpu|cuda|mps --precision auto|fp32|fp16|bf16 --force]
    python -m animate_backend serve

run and generate show progress bars on stderr and print where the result is on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pose_bridge.backend_protocol import denoising_units
from pose_bridge.cli_args import add_setting_arguments, whole
from pose_bridge.job import JobPaths
from pose_bridge.settings import GENERATION_SETTINGS, MAX_OUTPUT_SIDE, RUNTIME_SETTINGS


class ProgressBars:
    """tqdm bars on stderr fed by progress events: one for denoising, one for decoding.

    Other stages are one line each. A bar is closed when its stage ends.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._stage: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled or event.get("type") != "progress":
            return
        from tqdm import tqdm

        stage = event["stage"]
        if stage != self._stage:
            self.close()
            self._stage = stage
            if stage not in ("denoising", "decoding"):
                message = event.get("message") or ""
                tqdm.write(f"{stage}: {message}" if message else stage, file=sys.stderr)
        if stage == "denoising" and event.get("steps") and event.get("windows"):
            windows = int(event["windows"])
            done, total = denoising_units(event["step"], event["steps"], event["window"], windows)
            self._advance(total, done, f"denoising ({windows} window{'s' if windows > 1 else ''})", "step")
        elif stage == "decoding" and event.get("frames_total"):
            self._advance(int(event["frames_total"]), int(event["frames_done"] or 0), "decoding", "frame")

    def _advance(self, total: int, done: int, desc: str, unit: str) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
        self._bar.update(max(0, min(done, total) - self._bar.n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a render farm stopping a task, `kill`) ends the run like Ctrl-C: recorded in the
    job's log, temporary files removed, finished frames kept."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from animate_backend.job_runner import run_job

    bars = ProgressBars(enabled=not args.quiet)
    try:
        with _terminate_as_interrupt():
            result = run_job(args.job_dir, on_event=bars)
    finally:
        bars.close()
    if result["untrained"]:
        print("note: made by the tiny UNTRAINED model; the frames only show that the pipeline runs", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        paths = JobPaths(Path(args.job_dir))
        where = paths.root / result["video"] if result["video"] else paths.frames
        print(f"{result['frames']} frames in {result['seconds']:.1f} s: {where}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from animate_backend.generate import generate

    bars = ProgressBars(enabled=not args.quiet)
    try:
        summary = generate(
            args.model, args.reference, args.poses, args.out,
            width=args.width, height=args.height, steps=args.steps, guidance_scale=args.guidance_scale,
            seed=args.seed, context_frames=args.context_frames, context_overlap=args.context_overlap,
            context_schedule=args.context_schedule, fps=args.fps, device=args.device, precision=args.precision,
            speed=args.speed, draw_hands=args.draw_hands, draw_face=args.draw_face, overwrite=args.force, on_event=bars,
        )
    finally:
        bars.close()
    if summary["untrained"]:
        print("note: made by the tiny UNTRAINED model; the video only shows that the pipeline runs", file=sys.stderr)
    print(f"{summary['frames']} frames ({summary['width']}x{summary['height']}, {summary['fps']:g} fps) "
          f"in {summary['seconds']:.1f} s: {summary['video']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from animate_backend.server import serve

    return serve()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a job folder (frames, video.mp4, result.json into JOB_DIR/out)")
    p.add_argument("job_dir", metavar="JOB_DIR", help="the job folder (job.json, reference.png, poses.json)")
    p.add_argument("--json", action="store_true", help="print result.json on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)

    p = sub.add_parser("generate", help="make a video from a reference image and poses, without a job folder")
    p.add_argument("--model", required=True, help='a pipeline folder, or "tiny" for the untrained test model')
    p.add_argument("--reference", required=True, metavar="IMG", help="the character's reference image")
    p.add_argument("--poses", required=True, metavar="POSES",
                   help="poses.json, a folder of OpenPose frame files or skeleton images, or a skeleton video")
    p.add_argument("--out", required=True, metavar="VIDEO", help="the .mp4 to write")
    p.add_argument("--width", type=whole(at_least=8, at_most=MAX_OUTPUT_SIDE),
                   help="output width (default: the reference image's, multiple of 8)")
    p.add_argument("--height", type=whole(at_least=8, at_most=MAX_OUTPUT_SIDE),
                   help="output height (default: the reference image's, multiple of 8)")
    add_setting_arguments(p, ("fps",), defaults={"fps": None}, default_notes={"fps": "the poses' own, else 24"})
    # Every generation setting, as pose_bridge.settings declares it (the sampler is the job's only).
    add_setting_arguments(p, [name for name in GENERATION_SETTINGS if name not in ("scheduler", "retarget")])
    add_setting_arguments(p, RUNTIME_SETTINGS)
    p.add_argument("--force", action="store_true", help="replace VIDEO if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_generate)

    p = sub.add_parser("serve", help="the JSON-lines server the Blender add-on talks to (stdin/stdout)")
    p.set_defaults(func=_serve)
