"""Running one job folder: poses and a reference still in, frames, a video and a result out.

The steps live beside this module: the loaded models (pipeline_cache.py), the generation
path shared with `generate` (sampling.py), the log (job_log.py), the fingerprint
(fingerprint.py), the saved latents (latents_io.py) and out/'s upkeep (job_folder.py).

`run_job(job_dir)` reads the job folder (README.md) (pose_bridge.job.read_job) and writes
into its `out/` folder:

    out/frames/0001.png ...   one PNG per frame of the job's frame range, each written atomically
                              as soon as it is decoded
    out/latents.safetensors   the final denoised latents, saved before decoding starts
    out/video.mp4             H.264 at the job's fps, when "video" is in settings.output_kinds
    out/log.jsonl             one JSON object per line: what happened, with timestamps
    out/result.json           written last (see `run_job` for its fields)

Reruns keep finished work. Every run computes a fingerprint of everything that changes the
pictures (fingerprint.py: settings, model content, device kind and precision, input files;
not fps or output kinds). Frames left
by a run with the same fingerprint are kept and only missing frames are made: when the saved
latents match, only those frames are decoded (no denoising at all); when every frame exists,
only the video and result.json are (re)written. Outputs of a run with another fingerprint are
stale: every frame is made again, and the stale files are removed once the model has loaded
(so a run that fails before that, e.g. on missing weights, leaves the older outputs alone).

Retargeting (settings.retarget "chain" or "global", pose_input.py) needs the reference
character's skeleton, `reference_pose.json` in the job folder (JobPaths.reference_pose).
Without that file a retargeting job is an error; set retarget to "none" to run the poses as
they are.

Cancelling (should_cancel returns True) stops within one denoising window and raises
CancelledError: during denoising no frame is written, during decoding the frames already
written are kept. No file is ever left half-written.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from animate_backend.errors import BackendError, CancelledError, InputError, is_out_of_memory, out_of_memory_error
from animate_backend.events import EventCallback, ProgressTracker
from animate_backend.fingerprint import FINGERPRINT_SETTINGS, job_fingerprint
from animate_backend.job_folder import (
    check_output_layout, is_png_file, job_lock, outputs_fingerprint, remove_stale_outputs, write_video_if_needed,
)
from animate_backend.job_log import JobLog
from animate_backend.latents_io import load_latents, save_latents
from animate_backend.pipeline_cache import PipelineCache
from animate_backend.pose_input import aspect_note, no_reference_pose_message, prepare_poses
from animate_backend.sampling import decoded_frames, denoise
from pose_bridge.errors import PoseBridgeError
from pose_bridge.files import remove_partial_files, write_json_atomic
from pose_bridge.job import JobPaths, JobSettings

logger = logging.getLogger(__name__)

__all__ = ["PipelineCache", "run_job"]  # PipelineCache: callers hand one in to keep models loaded

RESULT_FORMAT = "animate_backend.result"
RESULT_VERSION = 1


def run_job(
    job_dir: str | os.PathLike,
    *,
    pipelines: PipelineCache | None = None,
    on_event: EventCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run the job in job_dir and return the content of its out/result.json.

    One process at a time runs a job folder: a second one raises JobError at once (the
    lock goes with the process, however it ends). Under the lock, temporary files that a
    killed run left in out/ are removed first. See _run_job for the rest.
    """
    paths = JobPaths(Path(job_dir))
    if not paths.root.is_dir():
        return _run_job(paths, pipelines, on_event, should_cancel)  # raises the "no such job" error
    with job_lock(paths):
        removed = remove_partial_files(paths.out) + remove_partial_files(paths.frames)
        if removed:
            logger.info("removed %d unfinished temporary files left in %s by an interrupted run", removed, paths.out)
        return _run_job(paths, pipelines, on_event, should_cancel)


def _settings_summary(settings: JobSettings) -> dict[str, Any]:
    keys = FINGERPRINT_SETTINGS + ("fps", "output_kinds", "device", "precision")
    return {key: getattr(settings, key) for key in keys}


def _run_job(
    paths: JobPaths,
    pipelines: PipelineCache | None,
    on_event: EventCallback | None,
    should_cancel: Callable[[], bool] | None,
) -> dict[str, Any]:
    """The job in `paths`: see run_job.

    on_event gets protocol events without the job id: {"type": "progress", "stage", "step",
    "steps", "window", "windows", "frames_done", "frames_total", "eta_s", "message"} and
    {"type": "frame", "index", "path"} (0-based index, absolute path) for every finished frame.

    result.json holds: format, version, frames (count), frame_paths and video (relative to the
    job folder; video null when not asked for), fps, width, height, seconds (this run), model,
    untrained, seed, fingerprint, frames_generated and frames_reused (this run), device, dtype,
    and settings (a summary of job.json).

    Raises JobError / InputError / WeightsError for bad jobs, OutOfMemoryError with advice,
    CancelledError when should_cancel() turned True.
    """
    from pose_bridge.job import read_job

    started = time.monotonic()
    emit_user = on_event or (lambda event: None)
    job = read_job(paths.root)
    settings = job.settings
    settings.validate()
    num_frames = settings.num_frames
    if settings.retarget != "none" and not paths.reference_pose.is_file():
        raise InputError(no_reference_pose_message(settings.retarget, paths.reference_pose))

    check_output_layout(paths, num_frames)
    log = JobLog(paths.log)
    fingerprint = job_fingerprint(paths, settings)
    # Outputs of other settings or inputs are stale: all frames are made again, and the old
    # files are removed once the model is loaded and the new outputs are about to be written.
    stale = outputs_fingerprint(paths, log) != fingerprint
    log.write({"type": "start", "fingerprint": fingerprint, "job": str(paths.root), "settings": settings.to_dict()})

    def emit(event: dict[str, Any]) -> None:
        log.write(event)
        emit_user(event)

    tracker = ProgressTracker(emit, num_frames)
    missing = [i for i in range(num_frames) if stale or not is_png_file(paths.frame(i))]
    model_info = {"model": settings.model, "untrained": None, "device": None, "dtype": None}
    try:
        if missing:
            cache = pipelines if pipelines is not None else PipelineCache()
            model_info = _generate_missing(
                job, paths, settings, missing, fingerprint, stale, cache, log, tracker, emit, should_cancel
            )
        else:
            log.message(f"all {num_frames} frames already exist for these settings; not generating again")
            model_info = _previous_model_info(paths, log, settings)
        video = None
        if "video" in settings.output_kinds:
            video = write_video_if_needed(paths, settings, num_frames, tracker, log)
    except BackendError as exc:
        log.write({"type": "cancelled" if isinstance(exc, CancelledError) else "error", "message": str(exc)})
        raise
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM in `run`): the frames written so far are finished and kept.
        log.write({"type": "interrupted", "message": "stopped by an interrupt; run the job again to resume"})
        raise
    except PoseBridgeError as exc:
        log.write({"type": "error", "message": str(exc)})
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            log.write({"type": "error", "kind": "out_of_memory", "message": str(exc)})
            raise out_of_memory_error(exc, settings.width, settings.height, settings.context_frames) from exc
        log.write({"type": "error", "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
        raise

    if model_info.get("untrained"):
        from animate_backend.loading import UNTRAINED_NOTE  # loading imports torch: only when needed

        log.message(f"UNTRAINED output: {UNTRAINED_NOTE}", logging.WARNING)
    result = {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "frames": num_frames,
        "frame_paths": [paths.frame(i).relative_to(paths.root).as_posix() for i in range(num_frames)],
        "video": video.relative_to(paths.root).as_posix() if video else None,
        "fps": settings.fps,
        "width": settings.width,
        "height": settings.height,
        "seconds": round(time.monotonic() - started, 3),
        "model": model_info.get("model") or settings.model,
        "untrained": bool(model_info.get("untrained")),
        "seed": settings.seed,
        "fingerprint": fingerprint,
        "frames_generated": len(missing),
        "frames_reused": num_frames - len(missing),
        "device": model_info.get("device"),
        "dtype": model_info.get("dtype"),
        "settings": _settings_summary(settings),
    }
    write_json_atomic(paths.result, result)
    tracker.stage("done", "finished", frames_done=num_frames)
    log.write({"type": "done", "seconds": result["seconds"]})
    return result


def _generate_missing(
    job, paths: JobPaths, settings: JobSettings, missing: list[int], fingerprint: str, stale: bool,
    pipelines: PipelineCache, log: JobLog, tracker: ProgressTracker, emit: EventCallback,
    should_cancel: Callable[[], bool] | None,
) -> dict[str, Any]:
    """Make the missing frames: denoise (unless matching latents were saved), then decode."""
    num_frames = settings.num_frames
    if pipelines.is_loaded(settings.model, settings.device, settings.precision, settings.speed):
        message = f"model {settings.model} is already loaded"
    else:
        message = f"loading model {settings.model}"
    tracker.stage("loading", message, frames_done=num_frames - len(missing))
    loaded = pipelines.get(settings.model, settings.device, settings.precision, settings.scheduler, settings.speed)
    model_info = {
        "model": str(loaded.model_id),
        "untrained": bool(loaded.untrained),
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
    }
    log.write({"type": "model", **model_info})
    if stale:
        remove_stale_outputs(paths, log)
    log.write({"type": "outputs", "fingerprint": fingerprint})

    latents = load_latents(paths.latents, fingerprint)
    if latents is not None:
        log.message(f"reusing the saved latents: decoding {len(missing)} missing frames without denoising")
    else:
        tracker.stage("preparing", "preparing poses and reference")
        height, width = settings.height, settings.width
        reference_size = (int(job.reference.shape[1]), int(job.reference.shape[0]))
        for name, size in (("reference.png", reference_size), ("the poses' canvas", job.poses.frames[0].size)):
            note = aspect_note(name, size, width, height)
            if note:
                log.message(note)
        poses = prepare_poses(
            job.poses, width, height, settings.retarget, paths.reference_pose, reference_size
        )
        latents = denoise(
            loaded.pipe, job.reference, poses,
            width=width, height=height, num_frames=num_frames, steps=settings.steps,
            guidance_scale=settings.guidance_scale, seed=settings.seed,
            context_frames=settings.context_frames, context_overlap=settings.context_overlap,
            context_schedule=settings.context_schedule, draw_hands=settings.draw_hands, draw_face=settings.draw_face,
            tracker=tracker, should_cancel=should_cancel,
        )
        save_latents(paths.latents, latents, fingerprint)
        log.write({"type": "latents", "path": paths.latents.relative_to(paths.root).as_posix()})

    from pose_bridge.image_io import write_png

    paths.frames.mkdir(parents=True, exist_ok=True)
    done_before = num_frames - len(missing)
    written = 0
    tracker.restart_clock("decoding")
    tracker.decoded(0, len(missing), done_before, f"decoding {len(missing)} frames")

    for index, rgb in decoded_frames(loaded.pipe, latents, missing, should_cancel=should_cancel):
        path = paths.frame(index)
        write_png(path, rgb)
        written += 1
        emit({"type": "frame", "index": index, "path": str(path.resolve())})
        tracker.decoded(written, len(missing), done_before)
    return model_info


def _previous_model_info(paths: JobPaths, log: JobLog, settings: JobSettings) -> dict[str, Any]:
    """Model details of the run that made the frames, when nothing had to be loaded now."""
    record = log.latest("model")
    if record is not None:
        return {key: record.get(key) for key in ("model", "untrained", "device", "dtype")}
    from animate_backend.loading import untrained_without_loading

    return {"model": settings.model, "untrained": untrained_without_loading(settings.model),
            "device": None, "dtype": None}
