"""Training settings: dataclasses read from a YAML file.

Defaults are the paper's and Moore-AnimateAnyone's (docs/model.md, "Training"): lr 1e-5,
stage 1 on single frames (paper: 768x768, batch 64, 30k steps), stage 2 on 24-frame
clips (batch 4, 10k steps), 10 % conditioning dropout, v-prediction with a zero
terminal SNR schedule. A YAML file only lists what differs; unknown keys are errors so
that a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from animate_backend.errors import InputError
from pose_bridge.settings import default_of


@dataclass
class ModelSettings:
    """Where the weights come from.

    Stage 1 starts from `pretrained_pipeline` (an Animate Anyone pipeline folder: its
    denoising UNet's 2D weights are used, motion modules dropped) or from Stable
    Diffusion weights: `sd_model` (a diffusers SD 1.5 folder with unet/ and vae/) plus
    `image_encoder` (a CLIPVisionModelWithProjection folder). `tiny: true` builds the
    small random models of animate_backend.tiny instead (tests, smoke runs).
    `size` trains from scratch: every model is built with random weights from a size
    config ("tiny", "demo", "sd15" or a JSON file, see animate_backend/configs/), except the
    VAE when `vae` names a trained one (stage 0, `python -m animate_backend.train vae`).
    Stage 2 starts from a pipeline folder (normally stage 1's output) in
    `pretrained_pipeline`; `motion_adapter` is an AnimateDiff-style MotionAdapter folder
    whose motion modules replace the pipeline's own.
    """

    pretrained_pipeline: str | None = None
    sd_model: str | None = None
    vae: str | None = None  # overrides sd_model/vae, e.g. stabilityai/sd-vae-ft-mse
    image_encoder: str | None = None
    motion_adapter: str | None = None
    tiny: bool = False
    tiny_seed: int = 0
    size: str | None = None
    # New motion modules when no adapter is given (AnimateDiff v2 layout, docs/model.md "Motion modules").
    motion_max_seq_length: int = 32
    motion_num_attention_heads: int = 8


@dataclass
class NoiseSettings:
    """The training noise schedule; the saved pipeline's DDIM sampler gets the same betas.

    Moore's training scripts use "scaled_linear" betas while its inference config says
    "linear" (docs/model.md, "Sampling"). Training and sampling must agree, so the schedule
    chosen here is also written into the output pipeline's scheduler.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    noise_offset: float = 0.05
    snr_gamma: float | None = 5.0


@dataclass
class DataSettings:
    """The clips and how samples are cut from them (see animate_backend.train.data)."""

    manifest: str = ""
    width: int = 512
    height: int = 768
    crop: str = "random"  # "random" or "center"; aspect-preserving, shared by target/pose/reference
    # Stage 1: the reference frame is at least this many frames from the target.
    # Stage 2: at least this many frames outside the clip window (0: anywhere in the video).
    min_reference_distance: int = 8
    clip_frames: int = 24  # stage 2 window length
    clip_stride: int = 4  # stage 2: frames between consecutive window frames
    draw_hands: bool = True
    draw_face: bool = True
    num_workers: int = 4


@dataclass
class OptimSettings:
    learning_rate: float = 1e-5
    scale_lr: bool = False  # multiply by batch size x accumulation x processes
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"  # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 1
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 30000
    mixed_precision: str = "no"  # "no", "fp16", "bf16"; accelerate's config or CLI may override
    gradient_checkpointing: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    uncond_probability: float = 0.1  # conditioning dropout for classifier-free guidance


@dataclass
class ValidationSettings:
    """Clips rendered with the real pipeline every `every_steps` steps (0: never).

    Without a reference image and poses, the first dataset sample is used.
    """

    every_steps: int = 1000
    reference_image: str | None = None
    poses: str | None = None  # a pose_bridge sequence file
    num_frames: int = 24
    num_inference_steps: int = default_of("steps")
    guidance_scale: float = default_of("guidance_scale")
    seed: int = 42


@dataclass
class VaeSettings:
    """Stage 0, the VAE trained from scratch (`python -m animate_backend.train vae`).

    Loss: L1 reconstruction + `ssim_weight` x (1 - SSIM) + `gradient_weight` x L1 of the
    image gradients (both sharpen edges without a downloaded perceptual network) +
    `kl_weight` x KL divergence of the posterior per latent element (keeps the latent
    space smooth for diffusion). After training, the latents' standard deviation over
    `scale_batches` batches sets the VAE's scaling_factor, so that scaled latents have unit
    variance as the diffusion schedule assumes.
    """

    ssim_weight: float = 0.2
    gradient_weight: float = 0.5
    kl_weight: float = 1.0e-5
    scale_batches: int = 16


@dataclass
class TrainConfig:
    stage: int = 1  # 0: the VAE, 1 and 2: the paper's stages
    output_dir: str = "train_output"
    seed: int = 42
    checkpointing_steps: int = 1000
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None  # a checkpoint folder or "latest"
    logging_steps: int = 10
    report_to: str = "tensorboard"
    # Torch threads per process when training on the CPU. `accelerate launch --cpu` sets
    # OMP_NUM_THREADS to one thread per core; on a machine whose cores are busy with other
    # work those threads wait on each other and a step ran 30x slower than on one thread.
    # One thread is never far from the fastest for small models and repeats bit for bit;
    # raise it on a dedicated many-core machine (0 keeps torch's own choice).
    cpu_threads: int = 1
    tracker_project_name: str = "animate_anyone"
    model: ModelSettings = field(default_factory=ModelSettings)
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    vae: VaeSettings = field(default_factory=VaeSettings)

    def validate(self) -> None:
        """Raise InputError for settings that cannot work, saying what to change."""
        if self.stage not in (0, 1, 2):
            raise InputError(f"stage must be 0 (the VAE), 1 or 2, got {self.stage}")
        m = self.model
        if m.size is not None:
            from animate_backend.configs import load_size_config

            try:
                load_size_config(m.size)
            except ValueError as exc:
                raise InputError(f"model.size: {exc}") from exc
        if self.stage == 0 and not m.size and not m.tiny:
            raise InputError("stage 0 trains a VAE from scratch: set model.size (e.g. demo) or tiny: true")
        if self.stage != 0 and not m.tiny and not m.size and not m.pretrained_pipeline and not m.sd_model:
            raise InputError(
                "model: set pretrained_pipeline (an Animate Anyone pipeline folder), or sd_model and "
                "image_encoder (Stable Diffusion 1.5 and CLIP image encoder folders), or size (from scratch: "
                "tiny, demo or a size JSON file, with vae: a trained VAE folder), or tiny: true"
            )
        if m.size and m.tiny:
            raise InputError("model.tiny and model.size both choose a model built from scratch; set one of them")
        if self.stage == 2 and not m.tiny and not m.pretrained_pipeline:
            raise InputError("stage 2 starts from a pipeline folder: set model.pretrained_pipeline to stage 1's output")
        if m.sd_model and not m.pretrained_pipeline and not m.tiny and not m.size and not m.image_encoder:
            raise InputError("model.image_encoder is required with model.sd_model (SD folders have no CLIP image encoder)")
        d = self.data
        if not d.manifest:
            raise InputError("data.manifest is required: a JSON or JSONL file listing the training clips")
        if d.width % 8 or d.height % 8 or d.width <= 0 or d.height <= 0:
            raise InputError(f"data.width and data.height must be positive multiples of 8, got {d.width}x{d.height}")
        if d.crop not in ("random", "center"):
            raise InputError(f"data.crop must be 'random' or 'center', got {d.crop!r}")
        if d.clip_frames < 1 or d.clip_stride < 1 or d.min_reference_distance < 0:
            raise InputError("data.clip_frames and data.clip_stride must be >= 1, min_reference_distance >= 0")
        if self.stage == 2 and d.clip_frames > m.motion_max_seq_length:
            raise InputError(
                f"data.clip_frames ({d.clip_frames}) exceeds the motion modules' maximum length "
                f"({m.motion_max_seq_length})"
            )
        o = self.optim
        if o.mixed_precision not in ("no", "fp16", "bf16"):
            raise InputError(f"optim.mixed_precision must be 'no', 'fp16' or 'bf16', got {o.mixed_precision!r}")
        if o.train_batch_size < 1 or o.gradient_accumulation_steps < 1 or o.max_train_steps < 1:
            raise InputError("optim.train_batch_size, gradient_accumulation_steps and max_train_steps must be >= 1")
        if not 0.0 <= o.uncond_probability < 1.0:
            raise InputError(f"optim.uncond_probability must be in [0, 1), got {o.uncond_probability}")
        n = self.noise
        if n.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"noise.prediction_type must be 'epsilon' or 'v_prediction', got {n.prediction_type!r}")
        if self.cpu_threads < 0:
            raise InputError(f"cpu_threads must be >= 0 (0: torch's default), got {self.cpu_threads}")
        v = self.vae
        if min(v.ssim_weight, v.gradient_weight, v.kl_weight) < 0 or v.scale_batches < 1:
            raise InputError("vae: ssim_weight, gradient_weight and kl_weight must be >= 0, scale_batches >= 1")
        if n.rescale_betas_zero_snr and n.prediction_type == "epsilon":
            raise InputError(
                "noise.rescale_betas_zero_snr needs v_prediction: at zero terminal SNR an epsilon model "
                "cannot predict anything at the last timestep"
            )


_SECTIONS = {
    "model": ModelSettings,
    "noise": NoiseSettings,
    "data": DataSettings,
    "optim": OptimSettings,
    "validation": ValidationSettings,
    "vae": VaeSettings,
}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"unknown setting(s) {unknown} in {where}; known: {sorted(names)}")
    return cls(**values)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    values = dict(values or {})
    sections = {}
    for name, cls in _SECTIONS.items():
        section = values.pop(name, None) or {}
        if not isinstance(section, dict):
            raise InputError(f"'{name}' must be a mapping of settings, got {type(section).__name__}")
        sections[name] = _build(cls, section, name)
    config = _build(TrainConfig, values, "the top level")
    for name, section in sections.items():
        setattr(config, name, section)
    return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config. Relative paths in data/model/validation stay relative to the CWD.

    `overrides` are dotted keys ("optim.max_train_steps": 10), applied after the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"training config {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"training config {path} is not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise InputError(f"training config {path} must be a mapping of settings")
    for key, value in (overrides or {}).items():
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return config_from_dict(values)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
