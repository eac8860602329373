"""Running one job folder: poses and a reference still in, frames, a video and a result out.

`run_job(job_dir)` reads the job folder (README.md) (pose_bridge.job.read_job) and writes
into its `out/` folder:

    out/frames/0001.png ...   one PNG per frame of the job's frame range, each written atomically
                              as soon as it is decoded
    out/latents.safetensors   the final denoised latents, saved before decoding starts
    out/video.mp4             H.264 at the job's fps, when "video" is in settings.output_kinds
    out/log.jsonl             one JSON object per line: what happened, with timestamps
    out/result.json           written last (see `run_job` for its fields)

Reruns keep finished work. Every run computes a fingerprint of everything that changes the
pictures: the generation settings, the model's content (loading.model_digest: re-converting
or retraining into the same folder counts as another model), the kind of device and the
precision it runs in, reference.png, poses.json and, when retargeting, reference_pose.json.
fps and output kinds are not part of it. Frames left
by a run with the same fingerprint are kept and only missing frames are made: when the saved
latents match, only those frames are decoded (no denoising at all); when every frame exists,
only the video and result.json are (re)written. Outputs of a run with another fingerprint are
stale: every frame is made again, and the stale files are removed once the model has loaded
(so a run that fails before that, e.g. on missing weights, leaves the older outputs alone).

Retargeting (settings.retarget "chain" or "global", paper 4.1): the driving poses' bone
lengths are rescaled to the reference character's. The reference character's skeleton is read
from `reference_pose.json` in the job folder, an OpenPose frame file in the pixels of
reference.png (the add-on writes it from the armature at the reference frame; for a user's
image, `python -m pose_bridge detect` makes one). Without that file a retargeting job is an
error; set retarget to "none" to run the poses as they are.

Cancelling (should_cancel returns True) stops within one denoising window and raises
CancelledError: during denoising no frame is written, during decoding the frames already
written are kept. No file is ever left half-written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from animate_backend.errors import BackendError, CancelledError, InputError, OutOfMemoryError
from animate_backend.events import EventCallback, ProgressTracker
from pose_bridge.errors import JobError, PoseBridgeError
from pose_bridge.files import atomic_path, remove_partial_files, write_json_atomic
from pose_bridge.job import JobPaths, JobSettings
from pose_bridge.keypoints import PoseSequence

logger = logging.getLogger(__name__)

RESULT_FORMAT = "animate_backend.result"
RESULT_VERSION = 1
REFERENCE_POSE_FILE = "reference_pose.json"
# Settings that change the pictures; the others (fps, output kinds, provenance) can change
# between runs without making finished frames stale. device and precision count through
# what they resolve to (loading.compute_kind), so "auto" and "fp32" on a CPU are the same.
FINGERPRINT_SETTINGS = (
    "model", "width", "height", "frame_start", "frame_end", "steps", "guidance_scale", "seed",
    "context_frames", "context_overlap", "context_schedule", "scheduler", "retarget", "draw_hands", "draw_face",
)
UNTRAINED_NOTE = (
    "the model has random, UNTRAINED weights (the tiny test pipeline or a make-tiny folder): its "
    "frames only show that the plumbing works; use a converted model folder for real output"
)
OOM_ADVICE = (
    "the device ran out of memory. Try, in this order: a smaller context window "
    "(context_frames, e.g. 16 or 12), fp16 precision, a smaller output size, or close other "
    "programs using the GPU"
)


# ----------------------------------------------------------------------------- pipelines


@dataclass
class _CachedPipeline:
    loaded: Any  # animate_backend.loading.LoadedPipeline
    default_scheduler: Any


class PipelineCache:
    """Loaded pipelines by (model, its content, device, precision), so a server keeps its model
    between jobs, and loads it again when the folder's weights were replaced meanwhile.

    Only `max_loaded` pipelines stay loaded (one by default: a second full-size model rarely
    fits beside the first); the least recently used one is dropped to load another.
    """

    def __init__(self, max_loaded: int = 1) -> None:
        self.max_loaded = max_loaded
        self._entries: OrderedDict[tuple[str, str, str, str], _CachedPipeline] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(model: str, device: str, precision: str) -> tuple[str, str, str, str]:
        from animate_backend.loading import model_digest

        folder = model if model == "tiny" else str(Path(model).expanduser().resolve())
        return (folder, model_digest(model), device, precision)

    def is_loaded(self, model: str, device: str = "auto", precision: str = "auto") -> bool:
        return self._key(model, device, precision) in self._entries

    def get(self, model: str, device: str = "auto", precision: str = "auto", scheduler: str = "ddim"):
        """The LoadedPipeline for these settings, loading it on first use, with `scheduler` set."""
        from animate_backend.loading import load_pipeline

        key = self._key(model, device, precision)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                while len(self._entries) >= max(1, self.max_loaded):
                    _, dropped = self._entries.popitem(last=False)
                    del dropped
                    _empty_device_cache()
                loaded = load_pipeline(model, device=device, precision=precision)
                entry = _CachedPipeline(loaded, loaded.pipe.scheduler)
                self._entries[key] = entry
            self._entries.move_to_end(key)
            entry.loaded.pipe.scheduler = make_scheduler(scheduler, entry.default_scheduler)
            return entry.loaded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        _empty_device_cache()


def _empty_device_cache() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_scheduler(name: str, default: Any):
    """The scheduler called `name` (pose_bridge.job.SCHEDULERS) built from the model's own config.

    "ddim" is the model's own scheduler (docs/model.md, "Sampling", for converted Moore weights);
    the others reuse its noise schedule (betas, prediction type, zero-SNR rescaling).
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    if name == "ddim":
        return default if isinstance(default, DDIMScheduler) else DDIMScheduler.from_config(default.config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(default.config, algorithm_type="dpmsolver++")
    if name == "euler":
        return EulerDiscreteScheduler.from_config(default.config)
    if name == "lcm":
        return LCMScheduler.from_config(default.config)
    raise InputError(f"unknown scheduler {name!r}; use one of ddim, dpmsolver++, euler, lcm")


# ----------------------------------------------------------------------------- the log


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class JobLog:
    """out/log.jsonl: one JSON object per line, appended, each with a UTC time and seconds since start.

    Appending whole lines with one write keeps earlier runs' lines intact when a run crashes.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(
            {"time": _now(), "elapsed_s": round(time.monotonic() - self.started, 3), **record},
            separators=(",", ":"),
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def message(self, text: str, level: int = logging.INFO) -> None:
        logger.log(level, text)
        self.write({"type": "message", "level": logging.getLevelName(level).lower(), "message": text})

    def records(self) -> list[dict[str, Any]]:
        """Every readable record of the log (a torn last line from a crash is skipped)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def latest(self, type_: str) -> dict[str, Any] | None:
        for record in reversed(self.records()):
            if record.get("type") == type_:
                return record
        return None


# ----------------------------------------------------------------------------- fingerprints


def _file_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def job_fingerprint(paths: JobPaths, settings: JobSettings) -> str:
    """A short hash of everything that changes the generated pictures."""
    from animate_backend.loading import compute_kind, model_digest
    from animate_backend.pipeline import COMPUTATION_VERSION

    data = {
        "computation": COMPUTATION_VERSION,
        "settings": {key: getattr(settings, key) for key in FINGERPRINT_SETTINGS},
        "model_content": model_digest(settings.model),
        "compute": list(compute_kind(settings.device, settings.precision)),
        "reference": _file_digest(paths.reference),
        "poses": _file_digest(paths.poses),
        "reference_pose": (
            _file_digest(paths.root / REFERENCE_POSE_FILE) if settings.retarget != "none" else None
        ),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _outputs_fingerprint(paths: JobPaths, log: JobLog) -> str | None:
    """The fingerprint of the run that made the outputs now in out/ (None if not known).

    A run writes an "outputs" log record just before it starts making outputs, so that a run
    that failed earlier (say, on missing weights) never makes an older run's frames look stale.
    """
    record = log.latest("outputs")
    if record is not None:
        return record.get("fingerprint")
    result = _read_json(paths.result)
    return result.get("fingerprint") if result else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _frame_files(paths: JobPaths) -> list[Path]:
    if not paths.frames.is_dir():
        return []
    return sorted(p for p in paths.frames.glob("[0-9][0-9][0-9][0-9]*.png") if p.stem.isdigit())


def count_finished_frames(job_dir: str | os.PathLike) -> int:
    """How many output frame files a job folder holds (for the `cancelled` event)."""
    return len(_frame_files(JobPaths(Path(job_dir))))


def _remove_stale_outputs(paths: JobPaths, log: JobLog) -> None:
    stale = _frame_files(paths) + [p for p in (paths.video, paths.result, paths.latents) if p.exists()]
    if stale:
        log.message(f"the files in out/ were made with other settings or inputs: removing {len(stale)} stale files")
    for path in stale:
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- latents


def save_latents(path: Path, latents, fingerprint: str) -> None:
    """Write the denoised latents with their fingerprint, atomically."""
    from safetensors.torch import save_file

    tensor = latents.detach().to("cpu", dtype=latents.dtype).contiguous()
    with atomic_path(path) as tmp:
        save_file({"latents": tensor}, str(tmp), metadata={"fingerprint": fingerprint, "format": "animate_backend.latents"})


def load_latents(path: Path, fingerprint: str):
    """The saved latents if they exist and belong to this fingerprint, else None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("fingerprint") != fingerprint or "latents" not in f.keys():
                return None
            return f.get_tensor("latents")
    except Exception as exc:  # a torn or foreign file: regenerate rather than fail
        logger.warning("ignoring unreadable %s (%s)", path, exc)
        return None


# ----------------------------------------------------------------------------- inputs


def prepare_poses(
    poses: PoseSequence,
    width: int,
    height: int,
    retarget: str = "none",
    reference_pose_file: Path | None = None,
    reference_size: tuple[int, int] | None = None,
) -> PoseSequence:
    """Poses on the model's canvas (aspect kept, centred), retargeted when asked.

    The reference image goes through the pipeline's aspect-preserving preprocessing to the
    same canvas, so fitting both the reference pose and the driving poses puts them in one
    space before the bone lengths are compared.
    """
    fitted = poses.fitted(width, height)
    if retarget == "none":
        return fitted
    from pose_bridge.openpose_json import read_frame
    from pose_bridge.retarget import retarget_sequence

    if reference_pose_file is None or not Path(reference_pose_file).is_file():
        raise InputError(_no_reference_pose_message(retarget))
    reference_pose = read_frame(reference_pose_file)
    if reference_size is not None and reference_pose.size != tuple(reference_size):
        logger.info(
            "%s is on a %dx%d canvas, reference.png is %dx%d; fitting both to %dx%d",
            reference_pose_file.name, *reference_pose.size, *reference_size, width, height,
        )
    return retarget_sequence(fitted, reference_pose.fitted(width, height), mode=retarget)


def _no_reference_pose_message(retarget: str) -> str:
    return (
        f"retarget is {retarget!r} but the job has no {REFERENCE_POSE_FILE} (the reference "
        f"character's skeleton, an OpenPose frame file in the pixels of reference.png); add "
        f"one (e.g. `python -m pose_bridge detect` on the reference image) or set retarget to none"
    )


def _aspect_note(name: str, size: tuple[int, int], width: int, height: int) -> str | None:
    w, h = size
    if abs(w / h - width / height) > 0.01 * (width / height):
        return (
            f"{name} is {w}x{h}, a different shape from the output {width}x{height}; it is scaled to "
            f"fit and centred (padded), never stretched"
        )
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------- generation


def denoise(
    pipe,
    reference_image,
    poses,
    *,
    width: int,
    height: int,
    num_frames: int,
    steps: int,
    guidance_scale: float,
    seed: int,
    context_frames: int,
    context_overlap: int,
    context_schedule: str = "tapered",
    draw_hands: bool = True,
    draw_face: bool = True,
    tracker: ProgressTracker,
    should_cancel: Callable[[], bool] | None = None,
):
    """Run the sampler and return the final latents (batch, 4, frames, height/8, width/8).

    Decoding is left to `decode_frames`, so that the latents can be saved in between.
    The noise comes from a CPU generator: the same seed gives the same start on every device.
    """
    import torch

    window = max(1, min(context_frames, num_frames))
    overlap = max(0, min(context_overlap, window - 1))
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    output = pipe(
        reference_image=reference_image,
        poses=poses,
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        context_frames=window,
        context_overlap=overlap,
        context_schedule=context_schedule,
        output_type="latent",
        on_progress=tracker.on_pipeline_progress,
        should_cancel=should_cancel,
        draw_hands=draw_hands,
        draw_face=draw_face,
    )
    return output.frames


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs [start, stop) of sorted indices, e.g. [0, 1, 2, 5] -> [(0, 3), (5, 6)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def decode_frames(
    pipe,
    latents,
    indices: Sequence[int],
    on_frame: Callable[[int, np.ndarray], None],
    *,
    should_cancel: Callable[[], bool] | None = None,
    chunk_size: int | None = None,
) -> None:
    """Decode the frames `indices` of `latents` chunk by chunk, handing each to on_frame(index, rgb).

    The VAE decodes frames independently, so any subset can be decoded. The pipeline checks
    should_cancel before each chunk: the frames handed out so far stay finished.
    """
    for start, stop in _runs(sorted(indices)):

        def hand_out(first: int, frames: np.ndarray, start: int = start) -> None:
            for k, frame in enumerate(frames):
                on_frame(start + first + k, frame)

        pipe.decode_video(
            latents[:, :, start:stop], on_frames=hand_out, chunk_size=chunk_size, output_type=None,
            should_cancel=should_cancel,
        )


def decode_chunk(pipe, latents, start: int, stop: int) -> np.ndarray:
    """Frames start..stop-1 of `latents`, decoded to uint8 (n, H, W, 3)."""
    chunks: list[np.ndarray] = []
    pipe.decode_video(
        latents[:, :, start:stop], on_frames=lambda first, frames: chunks.append(frames),
        chunk_size=max(1, stop - start), output_type=None,
    )
    return np.concatenate(chunks)


# ----------------------------------------------------------------------------- the job


def _settings_summary(settings: JobSettings) -> dict[str, Any]:
    keys = FINGERPRINT_SETTINGS + ("fps", "output_kinds", "device", "precision")
    return {key: getattr(settings, key) for key in keys}


def _untrained_without_loading(model: str) -> bool:
    from animate_backend.pipeline import UNTRAINED_MARKER

    return model == "tiny" or (Path(model).expanduser() / UNTRAINED_MARKER).exists()


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
    with _job_lock(paths):
        removed = remove_partial_files(paths.out) + remove_partial_files(paths.frames)
        if removed:
            logger.info("removed %d unfinished temporary files left in %s by an interrupted run", removed, paths.out)
        return _run_job(paths, pipelines, on_event, should_cancel)


@contextmanager
def _job_lock(paths: JobPaths) -> Iterator[None]:
    """Hold an exclusive lock on the job's out/ folder (a flock on the folder itself: no lock file)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; jobs there are not protected against a second run
        yield
        return
    _check_output_layout(paths)
    paths.out.mkdir(exist_ok=True)
    fd = os.open(paths.out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(
                f"the job {paths.root} is being run by another process right now; wait for it to finish "
                f"(or cancel it), then run again"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_output_layout(paths: JobPaths, num_frames: int = 0) -> None:
    """Raise JobError when something is in the way of an output: a file where out/ or
    out/frames/ goes, a folder where a file goes. Nothing there is moved or removed: it may be
    a user's."""
    folders = (paths.out, paths.frames)
    files = (paths.video, paths.log, paths.result, paths.latents, *(paths.frame(i) for i in range(num_frames)))
    blocked = [p for p in folders if p.exists() and not p.is_dir()] + [p for p in files if p.is_dir()]
    if blocked:
        raise JobError(
            f"{blocked[0]} is in the way: the job writes a {'folder' if blocked[0] in folders else 'file'} "
            f"there; move it elsewhere and run the job again"
        )


def _is_png_file(path: Path) -> bool:
    """Whether a frame file is there and is a PNG (a damaged or foreign file is made again)."""
    from pose_bridge.image_io import PNG_SIGNATURE

    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


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
    reference_pose_file = paths.root / REFERENCE_POSE_FILE
    if settings.retarget != "none" and not reference_pose_file.is_file():
        raise InputError(_no_reference_pose_message(settings.retarget))

    _check_output_layout(paths, num_frames)
    log = JobLog(paths.log)
    fingerprint = job_fingerprint(paths, settings)
    # Outputs of other settings or inputs are stale: all frames are made again, and the old
    # files are removed once the model is loaded and the new outputs are about to be written.
    stale = _outputs_fingerprint(paths, log) != fingerprint
    log.write({"type": "start", "fingerprint": fingerprint, "job": str(paths.root), "settings": settings.to_dict()})

    def emit(event: dict[str, Any]) -> None:
        log.write(event)
        emit_user(event)

    tracker = ProgressTracker(emit, num_frames)
    missing = [i for i in range(num_frames) if stale or not _is_png_file(paths.frame(i))]
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
            video = _write_video_if_needed(paths, settings, num_frames, tracker, log)
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
            raise OutOfMemoryError(f"{OOM_ADVICE} ({settings.width}x{settings.height}, "
                                   f"{settings.context_frames}-frame window)") from exc
        log.write({"type": "error", "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
        raise

    if model_info.get("untrained"):
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
    if pipelines.is_loaded(settings.model, settings.device, settings.precision):
        message = f"model {settings.model} is already loaded"
    else:
        message = f"loading model {settings.model}"
    tracker.stage("loading", message, frames_done=num_frames - len(missing))
    loaded = pipelines.get(settings.model, settings.device, settings.precision, settings.scheduler)
    model_info = {
        "model": str(loaded.model_id),
        "untrained": bool(loaded.untrained),
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
    }
    log.write({"type": "model", **model_info})
    if stale:
        _remove_stale_outputs(paths, log)
    log.write({"type": "outputs", "fingerprint": fingerprint})

    latents = load_latents(paths.latents, fingerprint)
    if latents is not None:
        log.message(f"reusing the saved latents: decoding {len(missing)} missing frames without denoising")
    else:
        tracker.stage("preparing", "preparing poses and reference")
        height, width = settings.height, settings.width
        reference_size = (int(job.reference.shape[1]), int(job.reference.shape[0]))
        for name, size in (("reference.png", reference_size), ("the poses' canvas", job.poses.frames[0].size)):
            note = _aspect_note(name, size, width, height)
            if note:
                log.message(note)
        poses = prepare_poses(
            job.poses, width, height, settings.retarget, paths.root / REFERENCE_POSE_FILE, reference_size
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

    def on_frame(index: int, rgb: np.ndarray) -> None:
        nonlocal written
        path = paths.frame(index)
        write_png(path, rgb)
        written += 1
        emit({"type": "frame", "index": index, "path": str(path.resolve())})
        tracker.decoded(written, len(missing), done_before)

    decode_frames(loaded.pipe, latents, missing, on_frame, should_cancel=should_cancel)
    return model_info


def _previous_model_info(paths: JobPaths, log: JobLog, settings: JobSettings) -> dict[str, Any]:
    """Model details of the run that made the frames, when nothing had to be loaded now."""
    record = log.latest("model")
    if record is not None:
        return {key: record.get(key) for key in ("model", "untrained", "device", "dtype")}
    return {"model": settings.model, "untrained": _untrained_without_loading(settings.model),
            "device": None, "dtype": None}


def _write_video_if_needed(
    paths: JobPaths, settings: JobSettings, num_frames: int, tracker: ProgressTracker, log: JobLog
) -> Path:
    """Encode out/video.mp4 from the frame files unless an up-to-date one exists."""
    from pose_bridge.image_io import read_image, write_video

    previous = _read_json(paths.result)
    video_current = (
        paths.video.is_file()
        and previous is not None
        and previous.get("video") is not None
        and previous.get("fps") == settings.fps
        and previous.get("frames") == num_frames
        and all(paths.frame(i).stat().st_mtime <= paths.video.stat().st_mtime for i in range(num_frames))
    )
    if video_current:
        return paths.video
    tracker.stage("encoding", f"writing {paths.video.name} at {settings.fps:g} fps", frames_done=num_frames)
    write_video(paths.video, (read_image(paths.frame(i)) for i in range(num_frames)), settings.fps)
    log.write({"type": "video", "path": paths.video.relative_to(paths.root).as_posix(), "fps": settings.fps})
    return paths.video
