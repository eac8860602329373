"""Stage 0: the VAE trained from scratch, so that a model can be made with no downloaded weights.

    python -m animate_backend.train vae --config animate_backend/configs/train_demo_vae.yaml [--resume latest]

The VAE of `model.size` (animate_backend/configs/*.json) learns to reconstruct single
frames of the training clips (the same manifest as stages 1 and 2). The loss (VaeSettings)
is L1 + SSIM + image-gradient L1 + a small KL term; no perceptual network is needed, so
nothing is downloaded. After the last step the latents' spread sets the VAE's
scaling_factor, and the VAE is saved to OUTPUT_DIR/vae, the folder stage 1 takes as
`model.vae`.

Resuming is exact, as in the other stages: sample order and crops depend on (seed, epoch,
index), the noise of a step on (seed, process, step), and checkpoints hold the model,
optimizer, lr schedule and position in the data.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from torch import nn
from tqdm.auto import tqdm

from animate_backend import metrics
from animate_backend.configs import load_size_config
from animate_backend.errors import InputError
from animate_backend.tiny import replace_folder
from animate_backend.train.config import TrainConfig, VaeSettings
from animate_backend.train.data import IMAGE_SUFFIXES, _to_unit_range, crop_box_for, crop_image
from animate_backend.train.manifest import read_manifest
from animate_backend.train.checkpoints import TrainingProgress, resolve_checkpoint
from animate_backend.train.loop import (
    log_and_checkpoint,
    make_accelerator,
    make_optimizer,
    micro_step_generator,
    resumable_batches,
)

logger = logging.getLogger(__name__)

VAE_DIR = "vae"


# --- data ---------------------------------------------------------------------------------


class FrameDataset(torch.utils.data.Dataset):
    """Every frame of the manifest's clips, cropped to width x height: {"pixel_values": (3, H, W) in [-1, 1]}.

    Frame-folder clips only (what `blender_addon.commands.dataset` writes): a VAE sees each frame on
    its own, and decoding a video from its start for every random frame would be slow. The
    crop depends on (seed, epoch, index) only.
    """

    def __init__(self, manifest: str | Path, width: int, height: int, crop: str = "random", seed: int = 0):
        self.size = (int(width), int(height))
        self.crop = crop
        self.seed = int(seed)
        self.epoch = 0
        self.frames: list[Path] = []
        for entry in read_manifest(manifest):
            if not isinstance(entry, dict) or "frames" not in entry:
                raise InputError(f"the VAE stage reads frame folders; manifest entry {str(entry)[:80]} has no "
                                 "'frames' (extract a video's frames into a folder first)")
            folder = Path(entry["frames"])
            if not folder.is_dir():
                raise InputError(f"frame folder {folder} listed in {manifest} does not exist")
            self.frames.extend(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        if not self.frames:
            raise InputError(f"no frames found in the clips of {manifest}")
        logger.info("VAE dataset: %d frames from %s (%dx%d)", len(self.frames), manifest, *self.size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from pose_bridge.image_io import read_image

        rgb = read_image(self.frames[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        box = crop_box_for((rgb.shape[1], rgb.shape[0]), self.size, self.crop, rng)
        return {"pixel_values": _to_unit_range(crop_image(rgb, box, self.size))}


# --- model and loss -------------------------------------------------------------------------


def new_vae(size: str, seed: int) -> AutoencoderKL:
    """The VAE of a model size with random weights, deterministic in `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**load_size_config(size)["vae"])


class VaeTrainingModule(nn.Module):
    """The VAE's encode, posterior sample and decode in one forward, for `accelerator.prepare`."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        posterior = self.vae.encode(pixels).latent_dist
        # Noise from the step's own CPU generator: the same on any device and after a resume.
        eps = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
        latents = posterior.mean + posterior.std * eps.to(posterior.mean.device, posterior.mean.dtype)
        return self.vae.decode(latents).sample, posterior.mean, posterior.logvar


def image_gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical pixel differences of two batches (sharp edges)."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def vae_loss(reconstruction: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             settings: VaeSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """The stage-0 loss (see VaeSettings) and its parts for the log. Images in [-1, 1]."""
    reconstruction, target = reconstruction.float(), target.float()
    l1 = (reconstruction - target).abs().mean()
    loss = l1
    parts = {"l1": float(l1.detach())}
    if settings.ssim_weight:
        similarity = metrics.ssim((reconstruction + 1) / 2, (target + 1) / 2).mean()
        loss = loss + settings.ssim_weight * (1.0 - similarity)
        parts["ssim"] = float(similarity.detach())
    if settings.gradient_weight:
        gradient = image_gradient_l1(reconstruction, target)
        loss = loss + settings.gradient_weight * gradient
        parts["gradient"] = float(gradient.detach())
    kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).mean()
    loss = loss + settings.kl_weight * kl
    parts["kl"] = float(kl.detach())
    return loss, parts


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, dataset: FrameDataset, batches: int, batch_size: int) -> float:
    """1 / the standard deviation of the posterior means over the first frames of the dataset,
    so that scaled latents have unit variance (the diffusion schedule's assumption)."""
    values = []
    count = min(len(dataset), batches * batch_size)
    for start in range(0, count, batch_size):
        pixels = torch.stack([dataset[i]["pixel_values"] for i in range(start, min(start + batch_size, count))])
        values.append(vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean.float().flatten())
    std = float(torch.cat(values).std())
    return 1.0 / max(std, 1e-6)


def save_vae(vae: AutoencoderKL, folder: Path) -> Path:
    """Save atomically: into a temporary folder beside `folder`, then moved over it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        vae.save_pretrained(staging, safe_serialization=True)
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


# --- the loop --------------------------------------------------------------------------------


def train_vae(config: TrainConfig) -> Path:
    """Run stage 0 as configured; returns the saved VAE folder (OUTPUT_DIR/vae)."""
    config.validate()
    if config.stage != 0:
        raise InputError(f"train_vae runs stage 0, the config says stage {config.stage}")
    torch.set_flush_denormal(True)  # as in train(): denormals make CPU kernels 10-20x slower
    output_dir = Path(config.output_dir)
    accelerator = make_accelerator(config)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    size = config.model.size or "tiny"
    vae = new_vae(size, config.seed)
    vae.train()
    module = VaeTrainingModule(vae)
    d = config.data
    dataset = FrameDataset(d.manifest, d.width, d.height, d.crop, seed=config.seed)
    o = config.optim
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=o.train_batch_size, shuffle=True, num_workers=d.num_workers,
        drop_last=len(dataset) >= o.train_batch_size * accelerator.num_processes,
        generator=torch.Generator().manual_seed(config.seed),
    )
    lr = o.learning_rate
    if o.scale_lr:
        lr *= o.train_batch_size * o.gradient_accumulation_steps * accelerator.num_processes
    params = list(vae.parameters())
    optimizer = make_optimizer(params, config, lr)
    lr_scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=o.max_train_steps * accelerator.num_processes)
    module, optimizer, dataloader, lr_scheduler = accelerator.prepare(module, optimizer, dataloader, lr_scheduler)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    if accelerator.is_main_process and accelerator.log_with:
        accelerator.init_trackers(config.tracker_project_name + "_vae")
    if config.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(config.resume_from_checkpoint, output_dir)
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            logger.info("resumed from %s at step %d", checkpoint, progress.global_step)

    logger.info("stage 0 (VAE, size %s): %d parameters, %d frames, batch %d, %d steps",
                size, sum(p.numel() for p in params), len(dataset), o.train_batch_size, o.max_train_steps)
    bar = tqdm(total=o.max_train_steps, initial=progress.global_step, desc="stage 0 (VAE)",
               disable=not accelerator.is_local_main_process)
    running = 0.0
    for batch in resumable_batches(dataset, dataloader, progress, o.max_train_steps):
        generator = micro_step_generator(config.seed, accelerator.process_index, progress.micro_step)
        with accelerator.accumulate(module):
            pixels = batch["pixel_values"]
            reconstruction, mean, logvar = module(pixels, generator)
            loss, parts = vae_loss(reconstruction, pixels, mean, logvar, config.vae)
            accelerator.backward(loss)
            if accelerator.sync_gradients and o.max_grad_norm:
                accelerator.clip_grad_norm_(params, o.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        progress.micro_step += 1
        progress.batch_in_epoch += 1
        running += accelerator.gather(loss.detach()).mean().item() / o.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        progress.global_step += 1
        bar.update(1)
        with torch.no_grad():
            psnr = float(metrics.psnr(((reconstruction.detach() + 1) / 2).clamp(0, 1), (pixels + 1) / 2).mean())
        logs = {"loss": running, "psnr": psnr, "lr": lr_scheduler.get_last_lr()[0], **parts}
        running = 0.0
        bar.set_postfix(loss=f"{logs['loss']:.4f}", psnr=f"{psnr:.1f}")
        if log_and_checkpoint(accelerator, config, output_dir, progress.global_step, o.max_train_steps, logs):
            logger.info("step %d: loss %.4f, PSNR %.2f dB, SSIM %.3f", progress.global_step, logs["loss"],
                        psnr, parts.get("ssim", float("nan")))
    bar.close()

    accelerator.wait_for_everyone()
    folder = output_dir / VAE_DIR
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(module).vae
        trained.eval()
        dataset.set_epoch(0)
        factor = latent_scaling_factor(trained, dataset, config.vae.scale_batches, o.train_batch_size)
        trained.register_to_config(scaling_factor=factor)
        save_vae(trained, folder)
        logger.info("trained VAE saved to %s (scaling_factor %.4f)", folder, factor)
    accelerator.end_training()
    return folder
