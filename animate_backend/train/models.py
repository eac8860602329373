"""Building the models of each training stage from pipeline folders or Stable Diffusion weights,
choosing what trains, and exporting them as a pipeline.

diffusers turns a UNet2DConditionModel into a UNetMotionModel (`UNetMotionModel.from_unet2d`)
but not back; `unet2d_from_motion_unet` does the reverse for stage 1, which trains a
denoising UNet without temporal layers: the config's block types lose "Motion" and every
weight but the motion modules' is loaded strictly (a missing or unexpected key is an
error, never a silent partial load).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from animate_backend.errors import WeightsError
from animate_backend.loading import check_pipeline_folder
from animate_backend.models.motion_norm import use_per_frame_motion_norm, uses_per_frame_motion_norm
from animate_backend.models.pose_guider import PoseGuider
from animate_backend.models.reference_attention import remove_reference_attention
from animate_backend.pipeline import AnimateAnyonePipeline
from animate_backend.tiny import make_random_pipeline, make_tiny_pipeline
from animate_backend.train.config import TrainConfig

logger = logging.getLogger(__name__)

_BLOCK_TYPES_2D = {
    "CrossAttnDownBlockMotion": "CrossAttnDownBlock2D",
    "DownBlockMotion": "DownBlock2D",
    "CrossAttnUpBlockMotion": "CrossAttnUpBlock2D",
    "UpBlockMotion": "UpBlock2D",
}

# UNet2DConditionModel settings that a UNetMotionModel config carries under the same name.
_SHARED_KEYS = (
    "sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
    "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "transformer_layers_per_block", "reverse_transformer_layers_per_block",
    "use_linear_projection", "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type",
    "addition_time_embed_dim", "projection_class_embeddings_input_dim", "time_cond_proj_dim",
)


def is_motion_key(name: str) -> bool:
    return ".motion_modules." in name or name.startswith("motion_modules.")


def unet2d_from_motion_unet(motion_unet: UNetMotionModel) -> UNet2DConditionModel:
    """The 2D (per-frame) part of a UNetMotionModel as a UNet2DConditionModel, same weights."""
    config = motion_unet.config
    kwargs = {key: config[key] for key in _SHARED_KEYS if key in config and config[key] is not None}
    try:
        kwargs["down_block_types"] = tuple(_BLOCK_TYPES_2D[t] for t in config["down_block_types"])
        kwargs["up_block_types"] = tuple(_BLOCK_TYPES_2D[t] for t in config["up_block_types"])
    except KeyError as exc:
        raise WeightsError(f"cannot take the 2D UNet out of a motion UNet with block type {exc}") from exc
    # SD 1.5 configs call the head count "attention_head_dim"; the motion UNet names it right.
    kwargs["attention_head_dim"] = config["num_attention_heads"]
    unet = UNet2DConditionModel(**kwargs)
    state = {k: v for k, v in motion_unet.state_dict().items() if not is_motion_key(k)}
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"the motion UNet's 2D weights do not match a UNet2DConditionModel: {exc}") from exc
    return unet if motion_unet.dtype == torch.float32 else unet.to(dtype=motion_unet.dtype)


def zero_motion_outputs(module: nn.Module) -> None:
    """Zero every motion module's proj_out, so new temporal layers start as the identity.

    AnimateDiff initialises its motion modules this way; diffusers' MotionAdapter does not.
    """
    for name, child in module.named_modules():
        if name.endswith("proj_out") and "motion_modules" in name and isinstance(child, nn.Linear):
            nn.init.zeros_(child.weight)
            if child.bias is not None:
                nn.init.zeros_(child.bias)


def new_motion_adapter(
    unet: UNet2DConditionModel, max_seq_length: int = 32, num_attention_heads: int = 8, seed: int = 0
) -> MotionAdapter:
    """Fresh AnimateDiff-v2 style motion modules for `unet` (mid block included), zero output.

    Initialised from `seed` alone (the global random state is left as it was).
    """
    config = unet.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = _motion_adapter(config, max_seq_length, num_attention_heads)
    zero_motion_outputs(adapter)
    return adapter


def _motion_adapter(config, max_seq_length: int, num_attention_heads: int) -> MotionAdapter:
    return MotionAdapter(
        block_out_channels=tuple(config.block_out_channels),
        motion_layers_per_block=config.layers_per_block,
        motion_num_attention_heads=num_attention_heads,
        motion_norm_num_groups=config.norm_num_groups,
        motion_max_seq_length=max_seq_length,
        use_motion_mid_block=True,
    )


def motion_unet_from_unet2d(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """UNetMotionModel with `unet`'s 2D weights and `adapter`'s motion modules, normalising per frame.

    New motion modules and AnimateDiff adapters alike are trained and used per frame
    (`animate_backend.models.motion_norm`), in training exactly as at inference.
    """
    try:
        motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
    except ValueError as exc:
        raise WeightsError(f"the motion adapter does not fit the denoising UNet: {exc}") from exc
    use_per_frame_motion_norm(motion_unet)
    return motion_unet


def gaussian_init_pose_guider(pose_guider: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """The paper's Pose Guider initialisation: Gaussian weights, zero biases, zero conv_out."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in pose_guider.named_modules():
            if isinstance(module, nn.Conv2d):
                if name == "conv_out":
                    module.weight.zero_()
                else:
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()


# --- the models of a stage ----------------------------------------------------------------


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
