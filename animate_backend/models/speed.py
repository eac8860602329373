"""Speed settings of the pipeline: ways to compute the same video faster.

Each setting has a name (`SPEED_SETTINGS`) and is turned on with
`AnimateAnyonePipeline.enable_speed(name)`. None changes a weight or a state-dict key, so a
pipeline saves and loads the same with or without them. docs/performance.md has what each
one was measured to save, and where it does not pay.

- "channels_last": the convolutional models keep their activations channels-last (NHWC).
  oneDNN's CPU convolutions work in that layout, so NCHW activations are reordered on the way
  in and out of every convolution; channels-last skips those copies. It covers the denoising
  UNet, the ReferenceNet, the Pose Guider and the VAE's decoder. The VAE's encoder is left in
  NCHW: in channels-last its output (the reference latent) moved by about 1e-2 from a float64
  computation where NCHW stays within 1e-5, so it would change the video.
  Within float32 rounding of the plain path.
"""

from __future__ import annotations

import torch
from torch import nn

SPEED_SETTINGS = ("channels_last",)


def channels_last_models(pipe) -> list[nn.Module]:
    """The models "channels_last" converts (see the module docstring for why not the VAE encoder)."""
    models = [pipe.denoising_unet, pipe.reference_unet, pipe.pose_guider, pipe.vae.decoder]
    if getattr(pipe.vae, "post_quant_conv", None) is not None:
        models.append(pipe.vae.post_quant_conv)
    return models


def use_channels_last(pipe) -> None:
    """Store every 4-D weight of those models channels-last; their convolutions then keep
    activations channels-last too. Calling it again changes nothing."""
    for model in channels_last_models(pipe):
        model.to(memory_format=torch.channels_last)


def uses_channels_last(pipe) -> bool:
    """True when every convolution weight of those models is stored channels-last."""
    weights = [
        module.weight
        for model in channels_last_models(pipe)
        for module in model.modules()
        if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)
    ]
    return bool(weights) and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def enable_speed_setting(pipe, name: str) -> None:
    """Turn on one of `SPEED_SETTINGS` for `pipe`."""
    if name not in SPEED_SETTINGS:
        raise ValueError(f"unknown speed setting {name!r}; choose from {', '.join(SPEED_SETTINGS)}")
    if name == "channels_last":
        use_channels_last(pipe)
