"""The training loop of both stages (paper section 3.3), on accelerate.

    stage 1  single frames: ReferenceNet, denoising UNet (2D, no motion modules) and Pose
             Guider train; VAE and CLIP image encoder frozen.
    stage 2  clips: the denoising UNet gets motion modules (UNetMotionModel); only they
             train. ReferenceNet and Pose Guider are frozen as stage 1 left them.

One loop serves both: the stages differ in which models train (`build_stage_models`, `set_trainable`), in the
shape of a batch (frames or clips) and in how latents are laid out.

Reproducibility: sample choice depends on (seed, epoch, index) (see data.py), the noise,
timesteps and dropout of a micro-step on (seed, process, micro-step) only, and the
checkpoint stores models, optimizer, lr scheduler, EMA, RNG states and the position in
the data, so a resumed run continues exactly where the saved one stopped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, MotionAdapter, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from animate_backend.errors import InputError, WeightsError
from animate_backend.loading import check_pipeline_folder
from animate_backend.models.motion_norm import uses_per_frame_motion_norm
from animate_backend.models.pose_guider import PoseGuider
from animate_backend.models.reference_attention import remove_reference_attention
from animate_backend.pipeline import AnimateAnyonePipeline
from animate_backend.tiny import make_random_pipeline, make_tiny_pipeline, save_pipeline_folder
from animate_backend.train import losses
from animate_backend.train.config import TrainConfig, config_to_dict
from animate_backend.train.data import AnimateAnyoneDataset, crop_box_for, crop_image, crop_pose
from animate_backend.train.models import (
    gaussian_init_pose_guider,
    is_motion_key,
    motion_unet_from_unet2d,
    new_motion_adapter,
    unet2d_from_motion_unet,
)
from animate_backend.train.modules import AnimateAnyoneTrainingModule
from pose_bridge.image_io import read_image, write_png, write_video
from pose_bridge.keypoints import PoseSequence
from pose_bridge.openpose_json import load_poses

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
PIPELINE_DIR = "pipeline"
VALIDATION_DIR = "validation"


# --- models ----------------------------------------------------------------------------


@dataclass
class StageModels:
    vae: nn.Module
    image_encoder: nn.Module
    feature_extractor: Any
    reference_unet: nn.Module
    denoising_unet: nn.Module  # UNet2DConditionModel in stage 1, UNetMotionModel in stage 2
    pose_guider: nn.Module
    noise_scheduler: Any


def make_noise_scheduler(config: TrainConfig):
    n = config.noise
    return DDPMScheduler(
        num_train_timesteps=n.num_train_timesteps,
        beta_start=n.beta_start,
        beta_end=n.beta_end,
        beta_schedule=n.beta_schedule,
        prediction_type=n.prediction_type,
        rescale_betas_zero_snr=n.rescale_betas_zero_snr,
        clip_sample=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )


def _load_pipeline_folder(folder: str):
    """A saved pipeline folder in float32 (training keeps fp32 master weights)."""

    path = Path(folder).expanduser()
    check_pipeline_folder(path)
    return AnimateAnyonePipeline.from_pretrained(str(path), dtype=torch.float32)


def _load_sd_models(config: TrainConfig) -> StageModels:
    """Stage 1 from Stable Diffusion 1.5 weights: both UNets from the SD UNet, a fresh Pose Guider."""
    m = config.model
    sd = Path(m.sd_model)
    for needed in (sd / "unet", Path(m.vae) if m.vae else sd / "vae", Path(m.image_encoder)):
        if not needed.is_dir():
            raise WeightsError(f"{needed} does not exist; model.sd_model must be a diffusers SD 1.5 folder "
                               "(unet/, vae/) and model.image_encoder a CLIP image encoder folder")
    reference_unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    denoising_unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(m.vae) if m.vae else AutoencoderKL.from_pretrained(sd, subfolder="vae")
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(m.image_encoder)
    if (Path(m.image_encoder) / "preprocessor_config.json").is_file():
        feature_extractor = CLIPImageProcessor.from_pretrained(m.image_encoder)
    else:
        feature_extractor = CLIPImageProcessor()
    if image_encoder.config.projection_dim != denoising_unet.config.cross_attention_dim:
        raise WeightsError(
            f"the image encoder's embedding ({image_encoder.config.projection_dim}) does not match the UNet's "
            f"cross-attention width ({denoising_unet.config.cross_attention_dim})"
        )
    pose_guider = PoseGuider(conditioning_embedding_channels=denoising_unet.config.block_out_channels[0])
    gaussian_init_pose_guider(pose_guider, seed=config.seed)
    return StageModels(vae, image_encoder, feature_extractor, reference_unet, denoising_unet, pose_guider,
                       make_noise_scheduler(config))


def _size_pipeline(config: TrainConfig) -> AnimateAnyonePipeline:
    """Every model built from scratch from `model.size`, the VAE from `model.vae` when given.

    The Pose Guider gets the paper's initialisation (Gaussian, zero output). A trained VAE
    must give the latents the size's UNet and Pose Guider expect.
    """
    m = config.model
    pipe = make_random_pipeline(m.size, seed=config.seed)
    gaussian_init_pose_guider(pipe.pose_guider, seed=config.seed)
    if m.vae:
        vae = load_trained_vae(m.vae)
        channels = pipe.denoising_unet.config.in_channels
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if vae.config.latent_channels != channels or factor != pipe.pose_guider.downscale_factor:
            raise WeightsError(
                f"the VAE in {m.vae} makes {vae.config.latent_channels}-channel latents at 1/{factor} size, but "
                f"model.size {m.size} expects {channels} channels at 1/{pipe.pose_guider.downscale_factor}; "
                "train the VAE with the same model.size (python -m animate_backend.train vae)"
            )
        pipe.vae = vae
        pipe.vae_scale_factor = factor
    else:
        logger.warning("model.size without model.vae: the VAE has random weights; train one first with "
                       "`python -m animate_backend.train vae` and give its folder as model.vae")
    return pipe


def load_trained_vae(folder: str) -> AutoencoderKL:
    """An AutoencoderKL folder (stage 0's `vae/`, or any diffusers VAE) in float32."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise WeightsError(f"{path} is not a VAE folder (no config.json); give stage 0's output "
                           "(OUTPUT_DIR/vae) or a diffusers AutoencoderKL folder")
    return AutoencoderKL.from_pretrained(str(path), torch_dtype=torch.float32)


def build_stage_models(config: TrainConfig) -> StageModels:
    """The models of `config.stage`, initialised as docs/model.md ("Training") says."""
    m = config.model
    if m.tiny:
        pipe = make_tiny_pipeline(seed=m.tiny_seed)
    elif m.size and not m.pretrained_pipeline:
        pipe = _size_pipeline(config)
    elif m.pretrained_pipeline:
        pipe = _load_pipeline_folder(m.pretrained_pipeline)
    else:
        pipe = None
    if pipe is None:
        models = _load_sd_models(config)
    else:
        # Take the models out of the pipeline: drop its reference processors and pose hook
        # (the training module installs its own).
        remove_reference_attention(pipe.reference_unet, pipe.denoising_unet)
        pipe.pose_injector.remove()
        models = StageModels(pipe.vae, pipe.image_encoder, pipe.feature_extractor, pipe.reference_unet,
                             pipe.denoising_unet, pipe.pose_guider, make_noise_scheduler(config))

    unet = models.denoising_unet
    if config.stage == 1:
        if not isinstance(unet, UNet2DConditionModel):
            models.denoising_unet = unet2d_from_motion_unet(unet)
        return models

    # Stage 2: motion modules from the adapter folder, else the pipeline's own (stage 1 gives
    # zero-output ones), else new zero-output ones.
    if m.motion_adapter:
        if not Path(m.motion_adapter).is_dir():
            raise WeightsError(f"motion adapter folder {m.motion_adapter} does not exist")
        adapter = MotionAdapter.from_pretrained(m.motion_adapter)
        base = unet if isinstance(unet, UNet2DConditionModel) else unet2d_from_motion_unet(unet)
        models.denoising_unet = motion_unet_from_unet2d(base, adapter)
    elif isinstance(unet, UNet2DConditionModel):
        adapter = new_motion_adapter(unet, m.motion_max_seq_length, m.motion_num_attention_heads, seed=config.seed)
        models.denoising_unet = motion_unet_from_unet2d(unet, adapter)
    return models


def set_trainable(models: StageModels, stage: int) -> list[nn.Parameter]:
    """Freeze what the stage does not train; returns the trained parameters."""
    for frozen in (models.vae, models.image_encoder):
        frozen.requires_grad_(False)
        frozen.eval()
    if stage == 1:
        for module in (models.reference_unet, models.denoising_unet, models.pose_guider):
            module.requires_grad_(True)
            module.train()
        # The ReferenceNet's output layers are never used: only its attention inputs are.
        models.reference_unet.conv_norm_out.requires_grad_(False)
        models.reference_unet.conv_out.requires_grad_(False)
    else:
        models.reference_unet.requires_grad_(False).eval()
        models.pose_guider.requires_grad_(False).eval()
        models.denoising_unet.freeze_unet2d_params()
        models.denoising_unet.train()
        trainable = {n for n, p in models.denoising_unet.named_parameters() if p.requires_grad}
        motion = {n for n, _ in models.denoising_unet.named_parameters() if is_motion_key(n)}
        assert trainable == motion and motion, "stage 2 must train exactly the motion modules"
    params = []
    for module in (models.reference_unet, models.denoising_unet, models.pose_guider):
        params.extend(p for p in module.parameters() if p.requires_grad)
    return params


# --- pipeline export -------------------------------------------------------------------


def export_pipeline(models: StageModels, config: TrainConfig):
    """An AnimateAnyonePipeline built from copies of the current weights (training keeps its own).

    Stage 1's 2D denoising UNet goes into a UNetMotionModel with zero-output motion modules
    (identity in time), so the result is a complete pipeline that stage 2 starts from.
    """
    reference_unet = fresh_copy(models.reference_unet)
    denoising_unet = models.denoising_unet
    if isinstance(denoising_unet, UNet2DConditionModel):
        adapter = new_motion_adapter(denoising_unet, config.model.motion_max_seq_length,
                                     config.model.motion_num_attention_heads, seed=config.seed)
        denoising_unet = motion_unet_from_unet2d(fresh_copy(denoising_unet), adapter)
    else:
        denoising_unet = fresh_copy(denoising_unet)
    pose_guider = fresh_copy(models.pose_guider)
    scheduler = DDIMScheduler.from_config(models.noise_scheduler.config)
    # fresh_copy builds diffusers' own motion modules: the pipeline gives them the norm they
    # were trained with (new ones from stage 1 are per frame, like every released module).
    trained = models.denoising_unet
    per_frame = isinstance(trained, UNet2DConditionModel) or uses_per_frame_motion_norm(trained)
    trained_norm = "per_frame" if per_frame else "pooled"
    return AnimateAnyonePipeline(
        vae=models.vae,
        image_encoder=models.image_encoder,
        reference_unet=reference_unet,
        denoising_unet=denoising_unet,
        pose_guider=pose_guider,
        scheduler=scheduler,
        feature_extractor=models.feature_extractor,
        motion_norm=trained_norm,
    )


def fresh_copy(model: nn.Module) -> nn.Module:
    """The same weights in a new model built from its config: no training processors, hooks
    or checkpointing flags come along (a deepcopy would carry them)."""
    copy_ = type(model).from_config(model.config)
    copy_.load_state_dict(model.state_dict(), strict=True)
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        copy_ = copy_.to(dtype=dtype)
    return copy_.requires_grad_(False).eval()


# --- state saved in checkpoints ----------------------------------------------------------


class TrainingProgress:
    """Counters saved with every checkpoint (accelerate's register_for_checkpointing)."""

    def __init__(self) -> None:
        self.global_step = 0  # optimizer steps
        self.micro_step = 0  # batches consumed over the whole run
        self.epoch = 0
        self.batch_in_epoch = 0  # batches consumed in the current epoch

    def state_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def resumable_batches(dataset, dataloader, progress: "TrainingProgress", max_steps: int) -> Iterator[Any]:
    """The batches of every training loop, from where `progress` stands until max_steps updates.

    The sampler's order and the dataset's crops and frames both follow the epoch (accelerate's
    set_epoch reaches the dataset only for some sampler layouts); a resumed epoch skips the
    batches it had done. The caller counts progress.micro_step, batch_in_epoch and global_step;
    this counts epochs, and stops once global_step reaches max_steps.
    """
    while progress.global_step < max_steps:
        dataset.set_epoch(progress.epoch)
        dataloader.set_epoch(progress.epoch)
        loader = dataloader
        if progress.batch_in_epoch:
            loader = skip_first_batches(dataloader, progress.batch_in_epoch)
            loader.set_epoch(progress.epoch)
        for batch in loader:
            yield batch
            if progress.global_step >= max_steps:
                return
        progress.epoch += 1
        progress.batch_in_epoch = 0


def log_and_checkpoint(accelerator, config: TrainConfig, output_dir: Path, step: int, max_steps: int,
                       logs: dict[str, float]) -> bool:
    """After optimizer update `step`: log every logging_steps (and the last), checkpoint every
    checkpointing_steps. True when the logs were written."""
    logged = step % config.logging_steps == 0 or step == max_steps
    if logged:
        accelerator.log(logs, step=step)
    if config.checkpointing_steps and step % config.checkpointing_steps == 0:
        save_checkpoint(accelerator, output_dir, step, config.checkpoints_total_limit)
    return logged


def micro_step_generator(seed: int, process_index: int, micro_step: int) -> torch.Generator:
    """The RNG of one micro-step: depends on nothing else, so resuming needs no RNG state."""
    state = np.random.SeedSequence([seed, process_index, micro_step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def list_checkpoints(output_dir: Path) -> list[Path]:
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


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


def _make_optimizer(params: list[nn.Parameter], config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    o = config.optim
    if o.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise InputError("optim.use_8bit_adam needs bitsandbytes: `pip install bitsandbytes` "
                             "(CUDA only), or set use_8bit_adam: false") from exc
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(params, lr=lr, betas=(o.adam_beta1, o.adam_beta2),
                           weight_decay=o.adam_weight_decay, eps=o.adam_epsilon)


def _validation_inputs(config: TrainConfig, dataset: AnimateAnyoneDataset):
    """(reference image uint8, PoseSequence at the training size) for validation clips."""
    v = config.validation
    width, height = config.data.width, config.data.height
    if v.reference_image and v.poses:
        reference = read_image(v.reference_image)
        poses = load_poses(v.poses).fitted(width, height)
        frames = poses.frames[: v.num_frames]
        return reference, PoseSequence(frames, poses.fps)
    # The first clip of the dataset, centre-cropped: its reference and its next frames' poses.
    clip = dataset.clips[0]
    plan = dataset.plan(0)
    box = crop_box_for(clip.frame_size, (width, height), "center", np.random.default_rng(0))
    reference = crop_image(dataset.read_frames(clip, [plan.reference_index])[plan.reference_index], box,
                           (width, height))
    count = min(v.num_frames, clip.num_frames)
    poses = []
    for i in range(count):
        pose = clip.poses[i]
        if pose.size != clip.frame_size:
            pose = pose.resized(*clip.frame_size)
        poses.append(crop_pose(pose, box, (width, height)))
    return reference, PoseSequence(poses, clip.poses.fps)


def run_validation(models: StageModels, config: TrainConfig, dataset: AnimateAnyoneDataset, step: int,
                   accelerator, ema=None, params=None) -> Path:
    """Render a clip with the real pipeline from the current (EMA) weights; mp4 + first frame png."""
    v = config.validation
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        pipe = export_pipeline(models, config)
    finally:
        if ema is not None:
            ema.restore(params)
    pipe.to(accelerator.device)
    reference, poses = _validation_inputs(config, dataset)
    generator = torch.Generator(device="cpu").manual_seed(v.seed)
    output = pipe(
        reference_image=reference_to_pil(reference),
        poses=poses,
        height=config.data.height,
        width=config.data.width,
        num_frames=len(poses),
        num_inference_steps=v.num_inference_steps,
        guidance_scale=v.guidance_scale,
        generator=generator,
        output_type="np",
        draw_hands=config.data.draw_hands,
        draw_face=config.data.draw_face,
    )
    frames = _as_uint8_frames(output.frames)
    folder = Path(config.output_dir) / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"step-{step:06d}.mp4"
    write_video(video, iter(frames), fps=poses.fps)
    write_png(folder / f"step-{step:06d}.png", frames[0])
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack(frames[: min(8, len(frames))]), step, dataformats="NHWC")
    del pipe
    logger.info("validation clip written to %s", video)
    return video


def reference_to_pil(rgb: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(rgb)


def _as_uint8_frames(frames: np.ndarray) -> list[np.ndarray]:
    """The first video of an output_type="np" result, (B, F, H, W, 3) in [0, 1], as uint8 frames."""
    return list((np.clip(np.asarray(frames)[0], 0.0, 1.0) * 255.0).round().astype(np.uint8))


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The Accelerator of a run; on the CPU it also sets torch's thread count (config.cpu_threads)."""
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
        mixed_precision=config.optim.mixed_precision,
        log_with=None if config.report_to in ("", "none") else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        # Stage 1: the last transformer block of the ReferenceNet feeds nothing that is used.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.stage == 1)],
    )
    if accelerator.device.type == "cpu" and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
        logger.info("training on the CPU with %d torch thread(s) per process (cpu_threads)", config.cpu_threads)
    return accelerator


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
    optimizer = _make_optimizer(params, config, lr)
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
        checkpoint = _resolve_checkpoint(config.resume_from_checkpoint, output_dir)
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


CHECKPOINT_COMPLETE = "checkpoint.json"


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int | None) -> Path:
    """accelerator.save_state into checkpoints/checkpoint-STEP; keeps the newest `keep`.

    The state is written into `checkpoint-STEP.partial` and renamed once every process has
    written its part and the marker file CHECKPOINT_COMPLETE is in: a run stopped while
    saving leaves a .partial folder, never a checkpoint that `--resume latest` would pick.
    """
    checkpoints = Path(output_dir) / CHECKPOINT_DIR
    folder = checkpoints / f"checkpoint-{step}"
    partial = checkpoints / f"checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run stopped while saving
        checkpoints.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / CHECKPOINT_COMPLETE).write_text(json.dumps({"step": step}) + "\n", encoding="utf-8")
        if folder.exists():  # the same step saved before (a rerun): replace it only now
            shutil.rmtree(folder)
        os.replace(partial, folder)
        if keep:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def is_complete_checkpoint(folder: Path) -> bool:
    return (Path(folder) / CHECKPOINT_COMPLETE).is_file()


def _resolve_checkpoint(value: str, output_dir: Path) -> Path | None:
    if value == "latest":
        found = list_checkpoints(output_dir)
        complete = [p for p in found if is_complete_checkpoint(p)]
        newer = found[found.index(complete[-1]) + 1:] if complete else found
        for skipped in newer:
            logger.warning("skipping %s: it has no %s, so it was not completely written (a run stopped while "
                           "saving, or an older version); pass the folder to --resume to use it anyway",
                           skipped, CHECKPOINT_COMPLETE)
        if not complete:
            logger.info("no complete checkpoint in %s: starting from the beginning", output_dir / CHECKPOINT_DIR)
            return None
        return complete[-1]
    path = Path(value)
    if not path.is_dir():
        raise InputError(f"checkpoint {value} does not exist; give a checkpoint folder or 'latest'")
    return path


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
