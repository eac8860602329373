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
- "compile": regional `torch.compile` of the denoising UNet's transformer blocks (the spatial
  transformers' and the motion modules' `BasicTransformerBlock`s: the repeated blocks where
  most of the time goes). One compiled code serves every block of a shape, so compiling
  takes one pass over the UNet's resolutions, not one per block. The first call pays the
  compilation: about 50 s of CPU on 2 cores with a cold inductor cache, under 10 s with a
  warm one, against 1.1-1.25x faster denoising steps at narrow width; so it pays in a
  long-lived process (the server) or a long shot, not in one short call. Needs a C++
  compiler on the CPU. Within float32 rounding of the plain path.
"""

from __future__ import annotations

import torch
from torch import nn

SPEED_SETTINGS = ("channels_last", "compile")

# Compiled variants one block's code may have: the UNet's blocks come in about a dozen shapes
# (spatial and temporal, at every resolution level); torch's default of 8 would leave the rest
# running uncompiled after a warning.
COMPILE_VARIANTS = 32


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


def has_cpp_compiler() -> bool:
    """Whether torch.compile's CPU code generation can find a C++ compiler."""
    import os
    import shutil

    names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return any(name and shutil.which(name) for name in names)


def compile_transformer_blocks(unet: nn.Module) -> int:
    """`torch.compile` every `BasicTransformerBlock` of `unet` in place; returns how many.

    Compiling in place (`Module.compile`) keeps the module tree, names and state dict as they
    are. Calling it again changes nothing.
    """
    from diffusers.models.attention import BasicTransformerBlock

    if not has_cpp_compiler():
        raise RuntimeError(
            'the "compile" speed setting needs a C++ compiler (g++ or clang++, or $CXX) for torch.compile; '
            'install one, or choose speed "auto" or "channels_last"'
        )
    if torch._dynamo.config.recompile_limit < COMPILE_VARIANTS:
        torch._dynamo.config.recompile_limit = COMPILE_VARIANTS
    blocks = [module for module in unet.modules() if isinstance(module, BasicTransformerBlock)]
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile()
    return len(blocks)


def enable_speed_setting(pipe, name: str) -> None:
    """Turn on one of `SPEED_SETTINGS` for `pipe`."""
    if name not in SPEED_SETTINGS:
        raise ValueError(f"unknown speed setting {name!r}; choose from {', '.join(SPEED_SETTINGS)}")
    if name == "channels_last":
        use_channels_last(pipe)
    elif name == "compile":
        compile_transformer_blocks(pipe.denoising_unet)


def speed_settings_for(choice: str, device: torch.device | str) -> tuple[str, ...]:
    """The speed settings a job's `speed` choice (pose_bridge.settings) turns on, on `device`.

    "auto" is channels-last on the CPU, where it was measured to pay (docs/performance.md),
    and the plain computation elsewhere until it is measured there; "plain" is nothing.
    """
    if choice == "auto":
        return ("channels_last",) if torch.device(device).type == "cpu" else ()
    if choice == "plain":
        return ()
    if choice not in SPEED_SETTINGS:
        raise ValueError(f"unknown speed {choice!r}; choose from auto, plain, {', '.join(SPEED_SETTINGS)}")
    return (choice,)
