"""`python -m animate_backend generate`: a video from a reference image and poses, no job folder.

For people who have a picture and some motion but no Blender: the poses can be

- an OpenPose sequence file (poses.json) or a single OpenPose frame file,
- a folder of OpenPose frame files (one .json per frame, in name order),
- a folder of skeleton images (.png/.jpg/..., in name order, e.g. from a ControlNet tool), or
- a skeleton video.

Keypoints are redrawn at the output resolution (nothing lost to resizing); skeleton images go
to the pipeline as they are, through its aspect-preserving preprocessing. The output size
defaults to the reference image's, rounded to multiples of 8.

This takes the same generation path as a job (sampling.py: denoise, then decode), streaming
the decoded frames into the video encoder chunk by chunk, so no frame files are written and memory stays
flat. The video is written to a temporary file and renamed, so a cancelled run (Ctrl-C) never
leaves half a video. A job folder (`run`) is the way to keep frames and resume.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from animate_backend.context_windows import check_context
from animate_backend.errors import InputError, is_out_of_memory, out_of_memory_error
from animate_backend.events import EventCallback, ProgressTracker
from animate_backend.pipeline_cache import PipelineCache
from animate_backend.pose_input import prepare_poses
from animate_backend.sampling import decoded_frames, denoise
from pose_bridge.settings import MAX_OUTPUT_SIDE, JobSettings, check_value
from pose_bridge.keypoints import PoseSequence

logger = logging.getLogger(__name__)

DEFAULTS = JobSettings()  # each setting's default, as pose_bridge.settings declares it

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif")
DEFAULT_FPS = 24.0


@dataclass
class DrivingPoses:
    """What drives the character: keypoints, or skeleton images already drawn."""

    poses: PoseSequence | None
    images: list[np.ndarray] | None
    fps: float
    kind: str  # "sequence", "frame_folder", "image_folder" or "video"

    def __len__(self) -> int:
        return len(self.poses) if self.poses is not None else len(self.images or [])


def _natural_key(path: Path) -> list:
    """Name order with numbers compared as numbers: skeleton_2.png before skeleton_10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def load_driving_poses(path: str | os.PathLike, fps: float | None = None) -> DrivingPoses:
    """Read POSES in any of the four forms this command accepts (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"poses {path} do not exist; give a poses.json, a folder of frames or a skeleton video")
    if path.is_dir():
        json_files = sorted(path.glob("*.json"))
        images = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if json_files:
            from pose_bridge.openpose_json import load_poses

            return DrivingPoses(load_poses(path, fps=fps), None, fps or DEFAULT_FPS, "frame_folder")
        if images:
            from pose_bridge.image_io import read_image

            return DrivingPoses(None, [read_image(p) for p in images], fps or DEFAULT_FPS, "image_folder")
        raise InputError(
            f"{path} holds neither OpenPose .json frame files nor skeleton images "
            f"({', '.join(IMAGE_SUFFIXES)}); point POSES at the right folder"
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        from pose_bridge.openpose_json import load_poses

        sequence = load_poses(path, fps=fps)
        return DrivingPoses(sequence, None, fps or sequence.fps, "sequence")
    if suffix in VIDEO_SUFFIXES:
        from pose_bridge.image_io import read_video, video_fps

        frames = list(read_video(path))
        if not frames:
            raise InputError(f"the skeleton video {path} has no frames")
        return DrivingPoses(None, frames, fps or video_fps(path), "video")
    raise InputError(
        f"do not know how to read poses from {path.name}: give a .json sequence or frame file, a "
        f"folder of frame files or skeleton images, or a video ({', '.join(VIDEO_SUFFIXES)})"
    )


def output_size(reference_size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """The output (width, height): given values, else the reference image's, in multiples of 8.

    When only one side is given, the other keeps the reference's aspect.
    """
    ref_w, ref_h = reference_size
    if width is None and height is None:
        width, height = ref_w, ref_h
    elif width is None:
        width = height * ref_w / ref_h
    elif height is None:
        height = width * ref_h / ref_w
    rounded = (max(8, int(round(width / 8)) * 8), max(8, int(round(height / 8)) * 8))
    if rounded != (width, height):
        logger.info(
            "output size %gx%g rounded to %dx%d (the VAE works on 8x8 pixel blocks)", width, height, *rounded
        )
    return rounded


def check_settings(
    *, width: int | None, height: int | None, steps: int, guidance_scale: float, seed: int,
    context_frames: int, context_overlap: int, fps: float | None, context_schedule: str = DEFAULTS.context_schedule,
) -> None:
    """Raise InputError naming the first option that is out of range (the command line's names)."""
    for name, value, option in (("width", width, "--width"), ("height", height, "--height"),
                                ("steps", steps, "--steps"), ("guidance_scale", guidance_scale, "--guidance"),
                                ("seed", seed, "--seed"), ("fps", fps, "--fps")):
        problem = check_value(name, value, option) if value is not None else ""
        if problem:
            raise InputError(problem)
    check_context(context_frames, context_overlap, context_schedule,
                  names=("--context-frames", "--context-overlap", "--context-schedule"))


def check_output(out: Path, overwrite: bool) -> None:
    """Raise InputError unless the video can be written at `out` (checked by writing a file beside it)."""
    from pose_bridge.files import check_writable, remove_partial_files_of

    if out.suffix.lower() != ".mp4":
        raise InputError(f"the output {out} must be an .mp4 file")
    if out.is_dir():
        raise InputError(f"the output {out} is a folder; give the .mp4 file to write")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --force to replace it")
    try:
        check_writable(out.parent)
    except OSError as exc:
        raise InputError(
            f"cannot write {out}: {exc.strerror or exc} in {out.parent}; choose another --out"
        ) from exc
    remove_partial_files_of(out)  # what a killed earlier run left beside it


def generate(
    model: str,
    reference: str | os.PathLike,
    poses: str | os.PathLike,
    out: str | os.PathLike,
    *,
    width: int | None = None,
    height: int | None = None,
    steps: int = DEFAULTS.steps,
    guidance_scale: float = DEFAULTS.guidance_scale,
    seed: int = DEFAULTS.seed,
    context_frames: int = DEFAULTS.context_frames,
    context_overlap: int = DEFAULTS.context_overlap,
    context_schedule: str = DEFAULTS.context_schedule,
    fps: float | None = None,
    device: str = DEFAULTS.device,
    precision: str = DEFAULTS.precision,
    speed: str = DEFAULTS.speed,
    draw_hands: bool = DEFAULTS.draw_hands,
    draw_face: bool = DEFAULTS.draw_face,
    overwrite: bool = False,
    pipelines: PipelineCache | None = None,
    on_event: EventCallback | None = None,
) -> dict[str, Any]:
    """Make the video `out` (H.264 mp4) of the reference image's character doing `poses`.

    An existing `out` is replaced only with overwrite (--force), and only when it is a file.
    Every setting and the output's folder are checked before anything is loaded, so that no
    work is thrown away at the end. Returns a summary: video, frames, width, height, fps,
    seconds, model, untrained, seed. on_event gets the same progress events as a job run.
    """
    from pose_bridge.image_io import read_image, write_video

    started = time.monotonic()
    out = Path(out)
    check_settings(width=width, height=height, steps=steps, guidance_scale=guidance_scale, seed=seed,
                   context_frames=context_frames, context_overlap=context_overlap, fps=fps,
                   context_schedule=context_schedule)
    check_output(out, overwrite)
    reference_path = Path(reference)
    if not reference_path.is_file():
        raise InputError(f"reference image {reference_path} does not exist")
    reference_rgb = read_image(reference_path)
    size = output_size((reference_rgb.shape[1], reference_rgb.shape[0]), width, height)
    width, height = size
    if max(size) > MAX_OUTPUT_SIDE:
        raise InputError(
            f"the output would be {width}x{height} (the reference image's size), beyond the limit of "
            f"{MAX_OUTPUT_SIDE} pixels a side; give --width and/or --height (e.g. --width 512)"
        )
    driving = load_driving_poses(poses, fps)
    num_frames = len(driving)
    emit = on_event or (lambda event: None)
    tracker = ProgressTracker(emit, num_frames)

    tracker.stage("loading", f"loading model {model}")
    loaded = (pipelines if pipelines is not None else PipelineCache()).get(model, device, precision, speed=speed)
    if loaded.untrained:
        from animate_backend.loading import UNTRAINED_NOTE

        logger.warning("UNTRAINED model: %s", UNTRAINED_NOTE)
    tracker.stage("preparing", f"{num_frames} frames from {driving.kind} at {width}x{height}")
    pose_input: Any = prepare_poses(driving.poses, width, height) if driving.poses is not None else driving.images
    try:
        latents = denoise(
            loaded.pipe, reference_rgb, pose_input,
            width=width, height=height, num_frames=num_frames, steps=steps, guidance_scale=guidance_scale,
            seed=seed, context_frames=context_frames, context_overlap=context_overlap,
            context_schedule=context_schedule, draw_hands=draw_hands, draw_face=draw_face, tracker=tracker,
        )
        tracker.restart_clock("decoding")

        def frames() -> Iterator[np.ndarray]:
            # The encoder pulls frames; each chunk is decoded when it is needed.
            for written, (_, frame) in enumerate(decoded_frames(loaded.pipe, latents, range(num_frames)), 1):
                yield frame
                tracker.decoded(written, num_frames)

        write_video(out, frames(), driving.fps)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory_error(exc, width, height, context_frames) from exc
        raise
    tracker.stage("done", f"wrote {out}", frames_done=num_frames)
    return {
        "video": str(out),
        "frames": num_frames,
        "width": width,
        "height": height,
        "fps": driving.fps,
        "seconds": round(time.monotonic() - started, 3),
        "model": str(loaded.model_id),
        "untrained": bool(loaded.untrained),
        "seed": seed,
    }
