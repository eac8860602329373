"""Pipelines with random weights: the tiny one of tests and demos, and SD 1.5 size for benchmarks.

Same architecture as the released model (SD 1.5 UNet layout with 16 spatial transformers and
21 motion modules, ReferenceNet, Pose Guider, VAE, CLIP vision tower), only narrower. Their
output is noise: `pipe.is_untrained` is True, and a saved folder carries `TINY_MARKER`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from animate_backend.configs import build_denoising_unet, load_size_config
from animate_backend.errors import WeightsError
from animate_backend.models.pose_guider import PoseGuider
from animate_backend.pipeline import UNTRAINED_MARKER, AnimateAnyonePipeline, default_scheduler, make_clip_image_processor
from pose_bridge.files import give_normal_permissions, make_partial_dir, partial_prefix, remove_partial_dirs_of

TINY_MARKER = UNTRAINED_MARKER


def make_random_pipeline(size: str | os.PathLike = "tiny", seed: int = 0,
                         device: str | torch.device | None = None) -> AnimateAnyonePipeline:
    """A pipeline of the given size with random weights, deterministic in `seed`.

    `size` is "tiny", "sd15", "demo" or a size JSON file (animate_backend.configs).

    Weights are created directly on `device` (default CPU), in float32. The global random state
    is left untouched.
    """
    config = load_size_config(size)
    device = torch.device(device or "cpu")
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        reference_unet = UNet2DConditionModel(**config["unet"])
        denoising_unet = build_denoising_unet(config["unet"], config["motion"])
        vae = AutoencoderKL(**config["vae"])
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image_encoder"]))
        pose_guider = PoseGuider(**config["pose_guider"])
        # A zero conv_out would make the pose invisible in a random model; give it weights so
        # tests see the pose's effect (trained weights are loaded over this anyway).
        torch.nn.init.normal_(pose_guider.conv_out.weight, std=0.02)
    pipe = AnimateAnyonePipeline(
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=make_clip_image_processor(**config["feature_extractor"]),
        reference_unet=reference_unet,
        denoising_unet=denoising_unet,
        pose_guider=pose_guider,
        scheduler=default_scheduler(),
    )
    pipe.is_untrained = True
    for model in (reference_unet, denoising_unet, vae, image_encoder, pose_guider):
        model.eval()
    return pipe


def make_tiny_pipeline(seed: int = 0) -> AnimateAnyonePipeline:
    """The tiny untrained pipeline (CPU, float32): an 8-frame 64x64 video in about a second."""
    return make_random_pipeline("tiny", seed)


def is_pipeline_folder(folder: Path) -> bool:
    """Whether `folder` is a pipeline folder this program wrote (it has model_index.json)."""
    return (Path(folder) / "model_index.json").is_file()


def check_output_folder(out_dir: Path, overwrite: bool) -> None:
    """Raise WeightsError unless a pipeline may be written to `out_dir`.

    A new or empty folder is fine. An existing pipeline folder is replaced only with
    `overwrite` (--force); anything else (a file, a folder of the user's) never is.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise WeightsError(f"{out_dir} is a file, not a folder; choose a new folder for the pipeline")
    if not any(out_dir.iterdir()):
        return
    if not is_pipeline_folder(out_dir):
        raise WeightsError(
            f"{out_dir} already holds files and is not a pipeline folder (no model_index.json); it is "
            f"never replaced, even with --force: choose a new or empty folder"
        )
    if not overwrite:
        raise WeightsError(f"{out_dir} already holds a pipeline; choose another folder or pass --force to replace it")


def save_pipeline_folder(pipe: AnimateAnyonePipeline, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save `pipe` to `out_dir` atomically: written into a temporary folder beside it, then moved.

    An existing pipeline folder at `out_dir` is an error unless `overwrite`, which replaces it
    only after the new folder is complete; a folder that is not a pipeline folder is never
    replaced (check_output_folder). Unfinished folders of a killed earlier save are removed.
    """
    out_dir = Path(out_dir)
    recover_interrupted_replace(out_dir)
    check_output_folder(out_dir, overwrite)
    remove_partial_dirs_of(out_dir)
    staging = make_partial_dir(out_dir)
    try:
        pipe.save_pretrained(staging)
        for path in staging.rglob("*"):  # save_pretrained's own temporary files are private
            give_normal_permissions(path)
        replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _old_copy(target: Path) -> Path:
    return target.with_name(f"{partial_prefix(target.name)}old")


def replace_folder(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`, replacing an old one only once `new` is complete."""
    if target.exists():
        old = _old_copy(target)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def recover_interrupted_replace(target: Path) -> None:
    """Put back the old folder when a process was killed between replace_folder's two renames."""
    old = _old_copy(Path(target))
    if old.is_dir() and not Path(target).exists():
        os.replace(old, target)
