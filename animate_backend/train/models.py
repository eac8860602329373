"""Building the models of each training stage from pipeline folders or Stable Diffusion weights.

diffusers turns a UNet2DConditionModel into a UNetMotionModel (`UNetMotionModel.from_unet2d`)
but not back; `unet2d_from_motion_unet` does the reverse for stage 1, which trains a
denoising UNet without temporal layers: the config's block types lose "Motion" and every
weight but the motion modules' is loaded strictly (a missing or unexpected key is an
error, never a silent partial load).
"""

from __future__ import annotations

import logging

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import nn

from animate_backend.errors import WeightsError
from animate_backend.models.motion_norm import use_per_frame_motion_norm

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

