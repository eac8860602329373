"""The training loop of both stages (paper section 3.3), on accelerate.

    stage 1  single frames: ReferenceNet, denoising UNet (2D, no motion modules) and Pose
             Guider train; VAE and CLIP image encoder frozen.
    stage 2  clips: the denoising UNet gets motion modules (UNetMotionModel); only they
             train. ReferenceNet and Pose Guider are frozen as stage 1 left them.

One loop serves both: the stages differ in which models train (`build_stage_models`, `set_trainable`
in models.py), in the shape of a batch (frames or clips) and in how latents are laid out. What
the VAE's loop shares with it is in loop.py, checkpoints in checkpoints.py, validation clips in
validation.py.

Reproducibility: sample choice depends on (seed, epoch, index) (see data.py), the noise,
timesteps and dropout of a micro-step on (seed, process, micro-step) only, and the
checkpoint stores models, optimizer, lr scheduler, EMA, RNG states and the position in
the data, so a resumed run continues exactly where the saved one stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from animate_backend.errors import InputError
from animate_backend.tiny import save_pipeline_folder
from animate_backend.train import losses
from animate_backend.train.checkpoints import TrainingProgress, resolve_checkpoint
from animate_backend.train.config import TrainConfig, config_to_dict
from animate_backend.train.data import AnimateAnyoneDataset
from animate_backend.train.loop import (
    log_and_checkpoint,
    make_accelerator,
    make_optimizer,
    micro_step_generator,
    resumable_batches,
)
from animate_backend.train.models import StageModels, build_stage_models, export_pipeline, set_trainable
from animate_backend.train.modules import AnimateAnyoneTrainingModule
from animate_backend.train.validation import run_validation

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
PIPELINE_DIR = "pipeline"
VALIDATION_DIR = "validation"


# --- the loop ----------------------------------------------------------------------------


def _encode_latents(vae, pixels: torch.Tensor, sample: bool, generator: torch.Generator | None,
                    chunk: int = 16) -> torch.Tensor:
    """VAE latents x scaling factor: a posterior sample (targets) or its mean (the reference)."""
    out = []
    for start in range(0, pixels.shape[0], chunk):
        dist = vae.encode(pixels[start:start + chunk].to(vae.dtype)).latent_dist
        if sample:
            eps = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32)
            out.append(dist.mean + dist.std * eps.to(dist.mean.device, dist.mean.dtype))
        else:
            out.append(dist.mean)
    return torch.cat(out) * vae.config.scaling_factor


def training_loss(
    batch: dict[str, torch.Tensor],
    module: nn.Module,
    models: StageModels,
    config: TrainConfig,
    generator: torch.Generator,
    weight_dtype: torch.dtype,
) -> torch.Tensor:
    """One micro-step's loss: encode, noise, drop conditioning, predict, weight."""
    scheduler = models.noise_scheduler
    pixels = batch["pixel_values"]
    device = pixels.device
    batch_size = pixels.shape[0]
    with torch.no_grad():
        if config.stage == 1:
            latents = _encode_latents(models.vae, pixels.to(weight_dtype), True, generator)
        else:  # (B, F, 3, H, W) -> (B, 4, F, h, w)
            frames = pixels.shape[1]
            flat = _encode_latents(models.vae, pixels.flatten(0, 1).to(weight_dtype), True, generator)
            latents = flat.unflatten(0, (batch_size, frames)).permute(0, 2, 1, 3, 4)
        latents = latents.float()
        reference_latents = _encode_latents(
            models.vae, batch["reference_pixel_values"].to(weight_dtype), False, None).float()
        clip_embeds = models.image_encoder(batch["clip_pixel_values"].to(weight_dtype)).image_embeds
        clip_embeds = clip_embeds.float().unsqueeze(1)

    noise = losses.offset_noise(tuple(latents.shape), config.noise.noise_offset, generator, device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
    conditioned = torch.rand(batch_size, generator=generator) >= config.optim.uncond_probability
    timesteps, conditioned = timesteps.to(device), conditioned.to(device)
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    target = losses.training_target(scheduler, latents, noise, timesteps)

    prediction = module(noisy_latents, timesteps, reference_latents, clip_embeds, batch["pose_images"], conditioned)
    return losses.diffusion_loss(prediction, target, timesteps, scheduler, config.noise.snr_gamma)


def train(config: TrainConfig) -> Path:
    """Run one stage as configured; returns the saved pipeline folder."""
    config.validate()
    if config.stage == 0:
        raise InputError("stage 0 trains the VAE: use animate_backend.train.vae.train_vae "
                         "(python -m animate_backend.train vae)")
    # Denormal floats (weights and activations decaying towards zero) make CPU kernels 10-20x
    # slower; flushing them to zero costs nothing measurable in accuracy. CPU only.
    torch.set_flush_denormal(True)
    set_seed(config.seed)  # model initialisation; the loop's own randomness is seeded per micro-step
    output_dir = Path(config.output_dir)
    accelerator = make_accelerator(config)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    models = build_stage_models(config)
    params = set_trainable(models, config.stage)
    for frozen in (models.vae, models.image_encoder):
        frozen.to(accelerator.device)
        if weight_dtype != torch.float32:
            frozen.to(dtype=weight_dtype)
    if config.optim.gradient_checkpointing:
        models.denoising_unet.enable_gradient_checkpointing()
        if config.stage == 1:
            models.reference_unet.enable_gradient_checkpointing()
    module = AnimateAnyoneTrainingModule(models.reference_unet, models.denoising_unet, models.pose_guider)

    ema = None
    if config.optim.use_ema:
        ema = EMAModel(params, decay=config.optim.ema_decay)

    d = config.data
    dataset = AnimateAnyoneDataset(
        d.manifest, stage=config.stage, width=d.width, height=d.height, crop=d.crop,
        min_reference_distance=d.min_reference_distance, clip_frames=d.clip_frames, clip_stride=d.clip_stride,
        draw_hands=d.draw_hands, draw_face=d.draw_face, clip_processor=models.feature_extractor, seed=config.seed,
    )
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=config.optim.train_batch_size, shuffle=True, num_workers=d.num_workers,
        drop_last=len(dataset) >= config.optim.train_batch_size * accelerator.num_processes,
        generator=torch.Generator().manual_seed(config.seed),
    )

    lr = config.optim.learning_rate
    if config.optim.scale_lr:
        lr *= config.optim.train_batch_size * config.optim.gradient_accumulation_steps * accelerator.num_processes
    optimizer = make_optimizer(params, config, lr)
    lr_scheduler = get_scheduler(
        config.optim.lr_scheduler, optimizer,
        num_warmup_steps=config.optim.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.optim.max_train_steps * accelerator.num_processes,
    )
    module, optimizer, dataloader, lr_scheduler = accelerator.prepare(module, optimizer, dataloader, lr_scheduler)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    if accelerator.is_main_process and accelerator.log_with:
        tracker_config = {k: v for k, v in _flatten(config_to_dict(config)).items() if v is not None}
        accelerator.init_trackers(config.tracker_project_name, config=tracker_config)

    if config.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(config.resume_from_checkpoint, output_dir)
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            logger.info("resumed from %s at step %d", checkpoint, progress.global_step)

    logger.info("stage %d: %d trained parameters, %d clips, batch %d x %d accumulation x %d processes, %d steps",
                config.stage, sum(p.numel() for p in params), len(dataset), config.optim.train_batch_size,
                config.optim.gradient_accumulation_steps, accelerator.num_processes, config.optim.max_train_steps)
    bank = accelerator.unwrap_model(module).bank
    max_steps = config.optim.max_train_steps
    seed = config.seed
    bar = tqdm(total=max_steps, initial=progress.global_step, desc=f"stage {config.stage}",
               disable=not accelerator.is_local_main_process)
    running_loss = 0.0
    for batch in resumable_batches(dataset, dataloader, progress, max_steps):
        generator = micro_step_generator(seed, accelerator.process_index, progress.micro_step)
        with accelerator.accumulate(module):
            loss = training_loss(batch, module, models, config, generator, weight_dtype)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.optim.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        # Every micro-step: the reference tokens (and cached keys/values) belong to the
        # weights before this step's update.
        bank.clear()
        progress.micro_step += 1
        progress.batch_in_epoch += 1
        # Logged loss: mean over processes, summed over the micro-steps of one update.
        running_loss += accelerator.gather(loss.detach()).mean().item() / config.optim.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(params)
        progress.global_step += 1
        bar.update(1)
        logs = {"loss": running_loss, "lr": lr_scheduler.get_last_lr()[0]}
        running_loss = 0.0
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        log_and_checkpoint(accelerator, config, output_dir, progress.global_step, max_steps, logs)
        if (config.validation.every_steps and progress.global_step % config.validation.every_steps == 0
                and accelerator.is_main_process):
            run_validation(models, config, dataset, progress.global_step, accelerator, ema, params)
    bar.close()

    accelerator.wait_for_everyone()
    folder = output_dir / PIPELINE_DIR
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(params)
        pipe = export_pipeline(models, config)
        save_pipeline_folder(pipe, folder, overwrite=True)
        logger.info("trained pipeline saved to %s", folder)
    accelerator.end_training()
    return folder


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
