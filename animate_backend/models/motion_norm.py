"""Per-frame GroupNorm for the motion modules (docs/model.md, "Motion modules").

A motion module starts with a GroupNorm. AnimateDiff, and so every released Animate Anyone
motion module, normalises each frame on its own: the input is viewed as (batch x frames,
channels, height, width). diffusers' `AnimateDiffTransformer3D` instead applies its GroupNorm
to a (batch, channels, frames, height, width) tensor, which pools the statistics over all
frames of the window. The weights never saw that, and it makes one frame's output depend on
the brightness of the others: about 15% difference in the final latents on a random model.

`use_per_frame_motion_norm(unet)` swaps each motion module's `norm` for a `FrameGroupNorm`
holding the very same parameters, so state-dict keys, saving and loading are unchanged.
It is applied wherever a denoising UNet is put together: the pipeline's constructor (which
every loading path goes through) and the training stage that trains the motion modules.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# How a motion module's GroupNorm gathers its statistics (the pipeline's `motion_norm` setting).
MOTION_NORMS = ("per_frame", "pooled")


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm that normalises every frame of a (B, C, F, H, W) video separately.

    4-D input (B, C, H, W) is normalised as by `nn.GroupNorm`. Parameters and state-dict keys are
    those of `nn.GroupNorm`.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.ndim != 5:
            return super().forward(hidden_states)
        batch, channels, frames, height, width = hidden_states.shape
        per_frame = hidden_states.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        normed = F.group_norm(per_frame, self.num_groups, self.weight, self.bias, self.eps)
        return normed.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)


def motion_module_norms(unet: nn.Module) -> dict[str, nn.GroupNorm]:
    """Each motion module's input norm, by the module's name (`...motion_modules.J`)."""
    norms = {}
    for name, module in unet.named_modules():
        parent, _, index = name.rpartition(".")
        if parent.endswith("motion_modules") and index.isdigit() and isinstance(getattr(module, "norm", None), nn.GroupNorm):
            norms[name] = module.norm
    return norms


def use_per_frame_motion_norm(unet: nn.Module) -> int:
    """Make every motion module of `unet` normalise per frame; returns how many modules there are.

    The new norm shares the old one's Parameter objects, so optimizers, hooks on parameters and
    device/dtype placement are unaffected. Calling it again changes nothing.
    """
    norms = motion_module_norms(unet)
    for name, norm in norms.items():
        if isinstance(norm, FrameGroupNorm):
            continue
        frame_norm = FrameGroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine, device="meta")
        frame_norm.weight, frame_norm.bias = norm.weight, norm.bias
        frame_norm.train(norm.training)
        unet.get_submodule(name).norm = frame_norm
    return len(norms)


def uses_per_frame_motion_norm(unet: nn.Module) -> bool:
    """True when `unet` has motion modules and every one of them normalises per frame."""
    norms = motion_module_norms(unet)
    return bool(norms) and all(isinstance(norm, FrameGroupNorm) for norm in norms.values())


def set_motion_norm(unet: nn.Module, motion_norm: str) -> None:
    """Apply a `MOTION_NORMS` choice: "per_frame" (AnimateDiff, the released weights) or
    "pooled" (diffusers' statistics over all frames of the window, kept only for models
    trained that way)."""
    if motion_norm not in MOTION_NORMS:
        raise ValueError(f"motion_norm must be one of {', '.join(MOTION_NORMS)}, got {motion_norm!r}")
    if motion_norm == "per_frame":
        use_per_frame_motion_norm(unet)
    elif any(isinstance(norm, FrameGroupNorm) for norm in motion_module_norms(unet).values()):
        raise ValueError("this UNet's motion modules already normalise per frame; build a new one for 'pooled'")
