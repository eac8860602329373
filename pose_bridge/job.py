"""The job folder: the one interface between the Blender add-on and the backend.

A job is a folder (README.md, "The three packages")::

    job/
      job.json        JobSettings below
      reference.png   the reference still
      poses.json      every frame's keypoints (pose_bridge.openpose_json sequence file)
      poses/          drawn skeletons, for people to look at
      out/            frames/0001.png..., video.mp4, log.jsonl, result.json, latents.safetensors

It lives here, in the package with the fewest dependencies, because both the add-on
(inside Blender, no torch) and the backend read and write it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from pose_bridge.errors import JobError
from pose_bridge.files import write_json_atomic  # noqa: F401 (the job folder's JSON writer, used by the backend)
from pose_bridge.keypoints import PoseSequence

JOB_FORMAT_VERSION = 1

RETARGET_MODES = ("none", "chain", "global")
OUTPUT_KINDS = ("frames", "video")
SCHEDULERS = ("ddim", "dpmsolver++", "euler", "lcm")
# How long videos are split into windows: "tapered" (ours, no wrap, cross-faded overlaps) or
# "loop" (Moore-AnimateAnyone's released windows, wrapping onto the first frames).
CONTEXT_SCHEDULES = ("tapered", "loop")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# Upper bounds of the numeric settings (the command lines use the same). The model works at
# about 512x768; 4096 a side is far beyond any GPU's memory for it already.
MAX_OUTPUT_SIDE = 4096
MAX_STEPS = 1000  # the noise schedule's own length
MAX_FPS = 1000.0
MAX_SEED = 2**63 - 1  # what a torch generator accepts


@dataclass
class JobSettings:
    """Everything the backend needs to know about one generation, stored as job.json.

    model: a pipeline folder (see animate_backend), or "tiny" for the small untrained
    pipeline used by tests and demos. Frames are numbered from frame_start to frame_end
    inclusive, as in Blender; the output frame files are 0001.png... in that order.
    """

    model: str = "tiny"
    width: int = 512
    height: int = 768
    fps: float = 24.0
    frame_start: int = 1
    frame_end: int = 24
    steps: int = 20
    guidance_scale: float = 3.5
    seed: int = 0
    context_frames: int = 24
    context_overlap: int = 4
    context_schedule: str = "tapered"
    scheduler: str = "ddim"
    retarget: str = "none"
    draw_hands: bool = True
    draw_face: bool = True
    device: str = "auto"
    precision: str = "auto"
    output_kinds: list[str] = field(default_factory=lambda: ["frames", "video"])
    # Where the job came from: blend file, scene, armature, camera, add-on version...
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = JOB_FORMAT_VERSION

    @property
    def num_frames(self) -> int:
        return self.frame_end - self.frame_start + 1

    def validate(self) -> None:
        """Raise JobError naming every problem at once, each with what to do."""
        problems = []
        if self.width <= 0 or self.height <= 0 or self.width % 8 or self.height % 8:
            problems.append(
                f"output size {self.width}x{self.height} must be positive multiples of 8 "
                f"(the VAE works on 8x8 pixel blocks); try "
                f"{max(8, round(self.width / 8) * 8)}x{max(8, round(self.height / 8) * 8)}"
            )
        elif self.width > MAX_OUTPUT_SIDE or self.height > MAX_OUTPUT_SIDE:
            problems.append(
                f"output size {self.width}x{self.height} is beyond the limit of {MAX_OUTPUT_SIDE} pixels a side"
            )
        if self.frame_end < self.frame_start:
            problems.append(
                f"frame range {self.frame_start}-{self.frame_end} has no frames; set the end frame "
                f"at or after the start frame"
            )
        if not (math.isfinite(self.fps) and 0 < self.fps <= MAX_FPS):
            problems.append(f"fps must be a positive number up to {MAX_FPS:g}, got {self.fps}")
        if self.steps < 1:
            problems.append(f"steps must be at least 1, got {self.steps}")
        elif self.steps > MAX_STEPS:
            problems.append(f"steps must be at most {MAX_STEPS} (the noise schedule's length), got {self.steps}")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be a whole number from 0 to {MAX_SEED}, got {self.seed}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            problems.append(f"guidance scale must be a number >= 0, got {self.guidance_scale}")
        if self.context_frames < 1:
            problems.append(f"context window must hold at least 1 frame, got {self.context_frames}")
        if not 0 <= self.context_overlap < max(1, self.context_frames):
            problems.append(
                f"context overlap must be between 0 and the window length minus one "
                f"({self.context_frames - 1}), got {self.context_overlap}"
            )
        for name, value, allowed in (
            ("scheduler", self.scheduler, SCHEDULERS),
            ("context schedule", self.context_schedule, CONTEXT_SCHEDULES),
            ("retarget", self.retarget, RETARGET_MODES),
            ("device", self.device, DEVICES),
            ("precision", self.precision, PRECISIONS),
        ):
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        unknown = [k for k in self.output_kinds if k not in OUTPUT_KINDS]
        if unknown or not self.output_kinds:
            problems.append(f"output kinds must be a non-empty subset of {OUTPUT_KINDS}, got {self.output_kinds}")
        if not self.model:
            problems.append('model is empty; give a pipeline folder, or "tiny" for the untrained test model')
        if problems:
            raise JobError("invalid job settings:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "job.json") -> JobSettings:
        if not isinstance(data, dict):
            raise JobError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobError(f"{source}: unknown settings {unknown}; known ones are {sorted(known)}")
        wrong = _wrong_types(data)
        if wrong:
            raise JobError(f"{source}: settings of the wrong type: " + "; ".join(wrong) + "; export the job again")
        if data.get("format_version", JOB_FORMAT_VERSION) > JOB_FORMAT_VERSION:
            raise JobError(
                f"{source} was written by a newer version (format {data['format_version']}); "
                f"update the backend to read it"
            )
        settings = cls(**data)
        for name in _WHOLE_SETTINGS:
            setattr(settings, name, int(getattr(settings, name)))
        for name in _NUMBER_SETTINGS:
            setattr(settings, name, float(getattr(settings, name)))
        return settings


# The JSON type of each setting, checked when job.json is read (validate checks the values).
_WHOLE_SETTINGS = ("width", "height", "frame_start", "frame_end", "steps", "seed", "context_frames",
                   "context_overlap", "format_version")
_NUMBER_SETTINGS = ("fps", "guidance_scale")
_TEXT_SETTINGS = ("model", "context_schedule", "scheduler", "retarget", "device", "precision")
_SWITCH_SETTINGS = ("draw_hands", "draw_face")


def _wrong_types(data: dict[str, Any]) -> list[str]:
    """What is of the wrong JSON type in a job.json object: a number as text, a list as an id..."""
    wrong = []

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for name, value in data.items():
        if name in _WHOLE_SETTINGS and not (is_number(value) and math.isfinite(value) and value == int(value)):
            wrong.append(f"{name} must be a whole number, got {value!r}")
        elif name in _NUMBER_SETTINGS and not is_number(value):
            wrong.append(f"{name} must be a number, got {value!r}")
        elif name in _TEXT_SETTINGS and not isinstance(value, str):
            wrong.append(f"{name} must be text, got {value!r}")
        elif name in _SWITCH_SETTINGS and not isinstance(value, bool):
            wrong.append(f"{name} must be true or false, got {value!r}")
        elif name == "output_kinds" and not (isinstance(value, list) and all(isinstance(k, str) for k in value)):
            wrong.append(f"output_kinds must be a list of names, got {value!r}")
        elif name == "provenance" and not isinstance(value, dict):
            wrong.append(f"provenance must be an object, got {value!r}")
    return wrong


@dataclass
class JobPaths:
    """The files of one job folder."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def settings(self) -> Path:
        return self.root / "job.json"

    @property
    def reference(self) -> Path:
        return self.root / "reference.png"

    @property
    def poses(self) -> Path:
        return self.root / "poses.json"

    @property
    def skeletons(self) -> Path:
        return self.root / "poses"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def frames(self) -> Path:
        return self.out / "frames"

    @property
    def video(self) -> Path:
        return self.out / "video.mp4"

    @property
    def log(self) -> Path:
        return self.out / "log.jsonl"

    @property
    def result(self) -> Path:
        return self.out / "result.json"

    @property
    def latents(self) -> Path:
        """Final denoised latents, kept so that a rerun after a crash in decoding skips denoising."""
        return self.out / "latents.safetensors"

    def frame(self, index: int) -> Path:
        """Output frame file of the index-th generated frame (0-based): out/frames/0001.png..."""
        return self.frames / f"{index + 1:04d}.png"

    @property
    def reference_pose(self) -> Path:
        """The reference character's skeleton (an OpenPose frame file in reference.png's pixels),
        which retargeting needs; the add-on writes it, `pose_bridge detect` makes one for an image."""
        return self.root / "reference_pose.json"

    def frame_files(self) -> list[Path]:
        """The output frame files out/frames/ holds now, in frame order (other files are ignored)."""
        if not self.frames.is_dir():
            return []
        return sorted(p for p in self.frames.glob("[0-9][0-9][0-9][0-9]*.png") if p.stem.isdigit())


def write_settings(job_dir: Path, settings: JobSettings) -> Path:
    settings.validate()
    paths = JobPaths(job_dir)
    write_json_atomic(paths.settings, settings.to_dict())
    return paths.settings


def read_settings(job_dir: Path) -> JobSettings:
    paths = JobPaths(job_dir)
    if not paths.root.is_dir():
        raise JobError(f"job folder {paths.root} does not exist; export the job first")
    if not paths.settings.is_file():
        raise JobError(f"{paths.settings} is missing; a job folder needs job.json (export the job again)")
    try:
        data = json.loads(paths.settings.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobError(f"{paths.settings} is not valid JSON ({exc}); export the job again") from exc
    settings = JobSettings.from_dict(data, source=str(paths.settings))
    settings.validate()
    return settings


# --------------------------------------------------------------------------- whole job folders


@dataclass
class Job:
    """A job folder read back: its settings, file layout, reference still and poses."""

    settings: JobSettings
    paths: JobPaths
    reference: np.ndarray  # (H, W, 3) uint8 RGB
    poses: PoseSequence


def write_job(
    job_dir: Path, settings: JobSettings, reference_rgb: np.ndarray, poses: PoseSequence, draw_skeletons: bool = True
) -> JobPaths:
    """Write a job folder: reference.png, poses.json, poses/0001.png... and job.json last.

    Every file is written to a temporary name and renamed, and job.json, which makes a folder
    a job, comes last: a failed export never leaves a job that looks complete but is not.
    Skeleton images are drawn at the poses' canvas size with the settings' hands/face
    switches; old skeleton images beyond the new frame count are removed.
    Raises JobError for invalid settings, a reference that is not an RGB image, or a pose
    count that differs from the frame range.
    """
    # Imported here: the drawing and file modules are only needed when writing a whole job.
    from pose_bridge.drawing import draw_sequence, stroke_scale_for
    from pose_bridge.image_io import write_png
    from pose_bridge.openpose_json import write_sequence

    settings.validate()
    if not isinstance(poses, PoseSequence):
        raise JobError(f"poses must be a PoseSequence, got {type(poses).__name__}")
    if len(poses) != settings.num_frames:
        raise JobError(
            f"the job has {settings.num_frames} frames ({settings.frame_start}-{settings.frame_end}) but "
            f"{len(poses)} poses were given; export poses for every frame of the range"
        )
    reference = np.asarray(reference_rgb)
    if reference.dtype != np.uint8 or reference.ndim != 3 or reference.shape[2] != 3 or 0 in reference.shape:
        raise JobError(
            f"the reference image must be an RGB uint8 array (H, W, 3), got {reference.dtype} {reference.shape}"
        )
    paths = JobPaths(job_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    # Re-exporting over an old job: drop its job.json first, so that a failure half way
    # leaves a folder read_job refuses instead of old settings over new poses.
    paths.settings.unlink(missing_ok=True)
    write_png(paths.reference, reference)
    write_sequence(poses, paths.poses)
    if draw_skeletons:
        paths.skeletons.mkdir(exist_ok=True)
        # These images are for people to look at, at any size: strokes scale with the canvas.
        # (The backend redraws at the model's resolution with the trained stroke sizes.)
        scale = stroke_scale_for(poses.canvas_width, poses.canvas_height)
        drawn = draw_sequence(poses, hands=settings.draw_hands, face=settings.draw_face, stroke_scale=scale)
        for i, image in enumerate(drawn):
            write_png(paths.skeletons / f"{i + 1:04d}.png", image)
        for old in paths.skeletons.glob("[0-9][0-9][0-9][0-9].png"):
            if int(old.stem) > len(poses):
                old.unlink()
    write_settings(paths.root, settings)
    return paths


def read_job(job_dir: Path) -> Job:
    """Read and check a whole job folder; JobError says which file is wrong and what to do."""
    from pose_bridge.errors import PoseBridgeError
    from pose_bridge.image_io import read_image
    from pose_bridge.openpose_json import read_sequence

    settings = read_settings(job_dir)
    paths = JobPaths(job_dir)
    if not paths.reference.is_file():
        raise JobError(f"{paths.reference} is missing; export the job again")
    try:
        reference = read_image(paths.reference)
    except PoseBridgeError as exc:
        raise JobError(f"{paths.reference} cannot be read ({exc}); export the job again") from exc
    if not paths.poses.is_file():
        raise JobError(f"{paths.poses} is missing; export the job again")
    try:
        poses = read_sequence(paths.poses)
    except PoseBridgeError as exc:
        raise JobError(f"{paths.poses} is invalid ({exc}); export the job again") from exc
    if len(poses) != settings.num_frames:
        raise JobError(
            f"{paths.poses} has {len(poses)} frames but job.json asks for {settings.num_frames} "
            f"({settings.frame_start}-{settings.frame_end}); export the job again"
        )
    return Job(settings, paths, reference, poses)


def shot_job_dirs(out: Path, shots: list[Path]) -> list[Path]:
    """The job folder of each shot of a shot list: OUT/<stem of its .blend>, a stem used twice
    getting _2, _3... The batch command and the farm name them alike, so either can pick up
    the other's work."""
    seen: dict[str, int] = {}
    dirs = []
    for shot in shots:
        n = seen.get(shot.stem, 0) + 1
        seen[shot.stem] = n
        dirs.append(out / (shot.stem if n == 1 else f"{shot.stem}_{n}"))
    return dirs
