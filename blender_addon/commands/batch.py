"""Generate videos for a list of shots in one call, through the bpy module (no Blender needed):

    python -m blender_addon.commands.batch sh010.blend sh020.blend sh030.blend --out /renders/batch \\
        --model /models/animate_anyone --import plane --save

Each shot gets its job folder DIR/<file name without .blend>/ (the video in out/video.mp4).
The options are those of blender_addon.cli and apply to every shot.

A shot is skipped when it was done before with the same options from the same file: its
job.json records the .blend's content hash and the options, and out/result.json is there
for all its frames. A shot that fails is reported and the others go on. A summary ends the
run; the exit code is 1 when any shot failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from pose_bridge.errors import PoseBridgeError
from pose_bridge.files import file_sha256
from pose_bridge.job import JobPaths, read_settings, shot_job_dirs, write_settings

from ..errors import AddonError
from . import cli, shot_options

log = logging.getLogger(__name__)

# Options that do not change a shot's result and may differ between runs.
_NOT_FINGERPRINTED = ("out", "shots", "quiet", "backend_python", "import_mode", "save", "keep_going")


@dataclass
class ShotReport:
    blend: Path
    job_dir: Path
    status: str  # "done", "skipped" or "failed"
    detail: str


def options_fingerprint(args: argparse.Namespace) -> str:
    """A hash of the options that change what a shot produces."""
    chosen = {key: value for key, value in sorted(vars(args).items()) if key not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_done(job_dir: Path, blend_sha256: str, fingerprint: str) -> bool:
    """True when job_dir holds a finished run of this very .blend content with these options."""
    paths = JobPaths(job_dir)
    try:
        settings = read_settings(job_dir)
        result = json.loads(paths.result.read_text(encoding="utf-8"))
    except (PoseBridgeError, OSError, json.JSONDecodeError):
        return False
    record = settings.provenance.get("batch") or {}
    if record.get("options") != fingerprint or blend_sha256 not in record.get("blend_sha256", []):
        return False
    if result.get("frames") != settings.num_frames:
        return False
    video = result.get("video")
    return not video or (paths.root / video).is_file()


def _remember_saved_blend(job_dir: Path, blend: Path) -> None:
    """After --save the file changed: accept its new content as the same shot next time."""
    settings = read_settings(job_dir)
    record = settings.provenance.setdefault("batch", {})
    record.setdefault("blend_sha256", []).append(file_sha256(blend))
    write_settings(job_dir, settings)


def run_batch(args: argparse.Namespace, given: set[str] | None = None) -> list[ShotReport]:
    import bpy

    shots = [Path(s).expanduser().resolve() for s in args.shots]
    out = Path(args.out).expanduser().resolve()
    fingerprint = options_fingerprint(args)
    reports = []
    for index, (blend, job_dir) in enumerate(zip(shots, shot_job_dirs(out, shots)), start=1):
        print(f"[{index}/{len(shots)}] {blend.name}", file=sys.stderr, flush=True)
        try:
            if not blend.is_file():
                raise AddonError(f"{blend} does not exist; check the shot list")
            blend_sha256 = file_sha256(blend)
            if is_done(job_dir, blend_sha256, fingerprint):
                reports.append(ShotReport(blend, job_dir, "skipped", "done before with the same file and options"))
                continue
            cli.open_blend(blend)
            scene = cli.pick_scene(args.scene)
            options = shot_options.options_from_args(args, scene, given)
            options.job.provenance["batch"] = {"options": fingerprint, "blend_sha256": [blend_sha256]}
            outcome = cli.run_shot(
                scene, options, job_dir, import_mode=shot_options.import_mode_of(args, scene, given), save=args.save,
                export_only=args.export_only, backend_python=args.backend_python,
                on_line=cli.backend_printer(args.quiet),
            )
            if args.save:
                _remember_saved_blend(job_dir, Path(bpy.data.filepath))
            if outcome.result is None:
                detail = f"job written to {outcome.job_dir}"
            else:
                video = outcome.result.get("video")
                detail = str(outcome.job_dir / video) if video else str(outcome.job_dir / "out" / "frames")
                if outcome.result.get("untrained"):
                    detail += " (UNTRAINED model)"
            reports.append(ShotReport(blend, job_dir, "done", detail))
        except (AddonError, PoseBridgeError) as exc:
            reports.append(ShotReport(blend, job_dir, "failed", cli.one_line(exc)))
        except Exception as exc:  # a bug in one shot must not lose the others
            log.exception("unexpected failure on %s", blend)
            reports.append(ShotReport(blend, job_dir, "failed", f"{type(exc).__name__}: {cli.one_line(exc)}"))
        print(f"  {reports[-1].status}: {reports[-1].detail}", file=sys.stderr, flush=True)
    return reports


def summary(reports: list[ShotReport]) -> str:
    counts = {status: sum(r.status == status for r in reports) for status in ("done", "skipped", "failed")}
    width = max((len(r.blend.name) for r in reports), default=4)
    lines = [f"{r.blend.name:<{width}}  {r.status.upper() if r.status == 'failed' else r.status:<7}  {r.detail}"
             for r in reports]
    lines.append(
        f"{len(reports)} shot(s): {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m blender_addon.commands.batch",
        description="Generate Animate Anyone videos for a list of shots (.blend files).",
    )
    parser.add_argument("shots", nargs="+", metavar="SHOT.blend", help="the shots' .blend files")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder of the job folders, one per shot")
    shot_options.add_job_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.quiet)
    try:
        shot_options.options_from_args(args)  # a missing --model fails once, not once per shot
    except AddonError as exc:
        print(f"error: {cli.one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    reports = run_batch(args, shot_options.given_options(parser, args))
    print(summary(reports), flush=True)
    return 1 if any(r.status == "failed" for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
