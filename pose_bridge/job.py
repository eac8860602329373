"""The job folder: the one interface between the Blender add-on and the backend.

A job is a folder (README.md, "The three packages")::

    job/
      job.json        JobSettings (pose_bridge.settings)
      reference.png   the reference still
      poses.json      every frame's keypoints (pose_bridge.openpose_json sequence file)
      poses/          drawn skeletons, for people to look at
      out/            frames/0001.png..., video.mp4, log.jsonl, result.json, latents.safetensors

It lives here, in the package with the fewest dependencies, because both the add-on
(inside Blender, no torch) and the backend read and write it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose_bridge.errors import JobError
from pose_bridge.files import write_json_atomic  # noqa: F401 (the job folder's JSON writer, used by the backend)
from pose_bridge.keypoints import PoseSequence
from pose_bridge.settings import JobSettings


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

    def export_files(self) -> list[Path]:
        """What an export writes (and so may replace when exporting again), job.json last: it is
        what makes the folder a job. out/ belongs to the backend."""
        return [self.reference, self.poses, self.reference_pose, self.skeletons, self.settings]

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
