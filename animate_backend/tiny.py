"""Pipelines with random weights: the tiny one of tests and demos, and SD 1.5 size for benchmarks.

Same architecture as the released model (SD 1.5 UNet layout with 16 spatial transformers and
21 motion modules, ReferenceNet, Pose Guider, VAE, CLIP vision tower), only narrower. Their
output is noise: `pipe.is_untrained` is True, and a saved folder carries `TINY_MARKER`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from animate_backend.configs import build_denoising_unet, load_size_config
from animate_backend.errors import WeightsError
from animate_backend.models.pose_guider import PoseGuider
from animate_backend.pipeline import UNTRAINED_MARKER, AnimateAnyonePipeline, default_scheduler, make_clip_image_processor

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


def save_pipeline_folder(pipe: AnimateAnyonePipeline, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save `pipe` to `out_dir` atomically: written into a temporary folder beside it, then moved.

    An existing non-empty `out_dir` is an error unless `overwrite`, which replaces it only
    after the new folder is complete.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise WeightsError(f"{out_dir} already exists and is not empty; choose another folder or pass --force")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        pipe.save_pretrained(staging)
        replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def replace_folder(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`, replacing an old one only once `new` is complete."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
