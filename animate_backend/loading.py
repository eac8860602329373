"""Load a pipeline for generation: a saved folder, or "tiny" (random weights made in memory).

`load_pipeline(model, device, precision) -> LoadedPipeline`. Weights are fp16 on CUDA and
fp32 on CPU unless `precision` says otherwise. A folder that is missing, incomplete or not a
pipeline folder raises `WeightsError` naming what is missing and how to get it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from animate_backend.errors import WeightsError

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# component folder -> files it needs (any one of each tuple)
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors",)),
    "reference_unet": (("config.json",), ("diffusion_pytorch_model.safetensors",)),
    "denoising_unet": (("config.json",), ("diffusion_pytorch_model.safetensors",)),
    "pose_guider": (("config.json",), ("diffusion_pytorch_model.safetensors",)),
    "image_encoder": (("config.json",), ("model.safetensors",)),
    "feature_extractor": (("preprocessor_config.json",),),
    "scheduler": (("scheduler_config.json",),),
}

HOW_TO_GET = (
    "make one with `python -m animate_backend fetch-weights --out DIR` (downloads the public weights), "
    "`python -m animate_backend convert-moore ...` (from Moore-AnimateAnyone .pth files you have), "
    "or `python -m animate_backend make-tiny --out DIR` (random weights, for testing)"
)


UNTRAINED_NOTE = (
    "the model has random, UNTRAINED weights (the tiny test pipeline or a make-tiny folder): its "
    "frames only show that the plumbing works; use a converted model folder for real output"
)


def untrained_without_loading(model: str) -> bool:
    """Whether `model` ("tiny" or a folder) has random weights, told without loading it."""
    from animate_backend.pipeline import UNTRAINED_MARKER

    return model == "tiny" or (Path(model).expanduser() / UNTRAINED_MARKER).exists()


# Bytes read from each end of every file of a model folder for its digest.
DIGEST_SAMPLE_BYTES = 64 * 1024


def model_digest(model: str) -> str:
    """A short digest of a model's content, cheap enough to take before every job.

    "tiny" is made in memory from fixed code and seed. For a folder it covers every file's
    path, size and modification time plus a hash of its first and last 64 KiB, so that
    re-converting, retraining or `make-tiny --force` into the same folder gives another digest
    even when sizes stay the same. Only the pipeline's own two levels (files and component
    folders' files) are read, and hidden (temporary) files are left out. Something that is not
    a pipeline folder digests as "missing" without being searched (loading it fails anyway):
    a job naming "/" as its model must not walk the whole disk.
    """
    if model == "tiny":
        return "tiny"
    folder = Path(model).expanduser()
    if not (folder / "model_index.json").is_file():
        return "missing"
    h = hashlib.sha256()
    for path in sorted([*folder.glob("*"), *folder.glob("*/*")]):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        stat = path.stat()
        h.update(f"{relative.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(DIGEST_SAMPLE_BYTES))
            if stat.st_size > 2 * DIGEST_SAMPLE_BYTES:
                f.seek(-DIGEST_SAMPLE_BYTES, os.SEEK_END)
                h.update(f.read(DIGEST_SAMPLE_BYTES))
    return h.hexdigest()[:16]


def compute_kind(device: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """(device type, dtype name) the settings resolve to here, e.g. ("cuda", "float16").

    Part of a job's fingerprint: the same weights give other pictures in another precision
    or on another kind of device.
    """
    resolved = resolve_device(device)
    return resolved.type, str(resolve_dtype(precision, resolved)).replace("torch.", "")


@dataclass
class LoadedPipeline:
    pipe: "AnimateAnyonePipeline"  # noqa: F821 (imported lazily)
    device: torch.device
    dtype: torch.dtype
    untrained: bool
    model_id: str


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise WeightsError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise WeightsError("device cuda was asked for but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    return resolved


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if precision not in PRECISIONS:
        raise WeightsError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    if device.type == "cpu" and precision == "fp16":
        logger.warning("fp16 on the CPU is slow and poorly supported; fp32 or bf16 is better there")
    return PRECISIONS[precision]


def check_pipeline_folder(folder: Path) -> None:
    """Raise WeightsError listing everything a pipeline folder lacks."""
    if not folder.exists():
        raise WeightsError(f"model folder {folder} does not exist; {HOW_TO_GET}")
    if not folder.is_dir():
        raise WeightsError(f"model {folder} is a file, not a pipeline folder; {HOW_TO_GET}")
    if not (folder / "model_index.json").is_file():
        raise WeightsError(f"{folder} is not a pipeline folder (no model_index.json); {HOW_TO_GET}")
    problems = []
    for component, needs in REQUIRED_FILES.items():
        if not (folder / component).is_dir():
            problems.append(f"component folder {component}/ is missing")
            continue
        for options in needs:
            if not any((folder / component / name).is_file() for name in options):
                problems.append(f"{component}/{' or '.join(options)} is missing")
    if problems:
        raise WeightsError(
            f"model folder {folder} is incomplete: " + "; ".join(problems)
            + f". Convert or download it again: {HOW_TO_GET}"
        )


def _clause(exc: BaseException) -> str:
    """An exception's message as a clause of our own sentence: one line, no closing full stop."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.rstrip(" .")


def load_pipeline(model: str, device: str | torch.device = "auto", precision: str = "auto") -> LoadedPipeline:
    """The pipeline for `model` ("tiny" or a folder), on `device`, in `precision`."""
    from animate_backend.pipeline import AnimateAnyonePipeline
    from animate_backend.tiny import make_tiny_pipeline

    resolved = resolve_device(device)
    dtype = resolve_dtype(precision, resolved)
    if model == "tiny":
        pipe = make_tiny_pipeline()
        model_id = "tiny"
    else:
        folder = Path(model).expanduser()
        check_pipeline_folder(folder)
        try:
            pipe = AnimateAnyonePipeline.from_pretrained(folder, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise WeightsError(
                f"could not load the pipeline in {folder}: {_clause(exc)}. The folder may be damaged or "
                f"unfinished; {HOW_TO_GET}"
            ) from exc
        model_id = str(folder.resolve())
    # Cast only when needed: diffusers warns about casting even to the same dtype.
    if pipe.denoising_unet.dtype != dtype:
        pipe.to(dtype=dtype)
    pipe.to(device=resolved)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe=pipe, device=resolved, dtype=dtype, untrained=bool(pipe.is_untrained), model_id=model_id)
