"""Motion modules normalise each frame on its own, as the released motion modules were trained.

The expectation is written out by hand here (GroupNorm statistics of one frame, one group at a
time) and compared with what the real motion module feeds its first projection.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNetMotionModel
from torch import nn

from animate_backend.models.motion_norm import (
    FrameGroupNorm,
    motion_module_norms,
    set_motion_norm,
    use_per_frame_motion_norm,
    uses_per_frame_motion_norm,
)

FRAMES = 4


def per_frame_group_norm_by_hand(video: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """(B, C, F, H, W) -> the same shape, each frame and group normalised with its own statistics."""
    out = torch.empty_like(video)
    batch, channels, frames = video.shape[:3]
    group = channels // norm.num_groups
    for b in range(batch):
        for f in range(frames):
            for g in range(norm.num_groups):
                block = video[b, g * group : (g + 1) * group, f].double()
                mean, var = block.mean(), block.var(unbiased=False)
                normed = (block - mean) / torch.sqrt(var + norm.eps)
                weight = norm.weight[g * group : (g + 1) * group].double().view(-1, 1, 1)
                bias = norm.bias[g * group : (g + 1) * group].double().view(-1, 1, 1)
                out[b, g * group : (g + 1) * group, f] = (normed * weight + bias).float()
    return out


def frames_that_differ(channels: int, height: int = 4, width: int = 4) -> torch.Tensor:
    """A window whose frames have very different means and scales (B=1)."""
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, channels, FRAMES, height, width, generator=generator)
    for f in range(FRAMES):
        video[:, :, f] = video[:, :, f] * (1 + 3 * f) + 5 * f
    return video


def normed_input_of(module: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """What `module` (one motion module) passes to proj_in for `video`, back as (B, C, F, H, W)."""
    batch, channels, frames, height, width = video.shape
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["input"]

    handle = module.proj_in.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        rows = video.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        with torch.no_grad():
            module(rows, num_frames=frames)
    finally:
        handle.remove()
    # The module lays tokens out as (B x H x W, F, C).
    return seen["x"].reshape(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)


@pytest.fixture
def motion_unet(tiny_pipe) -> UNetMotionModel:
    return copy.deepcopy(tiny_pipe.denoising_unet)


def test_every_motion_module_of_the_pipeline_normalises_per_frame(tiny_pipe):
    norms = motion_module_norms(tiny_pipe.denoising_unet)
    assert len(norms) == 21  # 2 x 4 down, 3 x 4 up, 1 mid: AnimateDiff v2 layout
    assert uses_per_frame_motion_norm(tiny_pipe.denoising_unet)
    assert tiny_pipe.config.motion_norm == "per_frame"


def test_a_motion_module_normalises_each_frame_with_its_own_statistics(motion_unet):
    module = motion_unet.get_submodule("down_blocks.0.motion_modules.0")
    with torch.no_grad():  # a trained-looking affine part, so weight and bias are checked too
        module.norm.weight.copy_(torch.linspace(0.5, 1.5, module.norm.num_channels))
        module.norm.bias.copy_(torch.linspace(-0.2, 0.2, module.norm.num_channels))
    video = frames_that_differ(module.norm.num_channels)
    expected = per_frame_group_norm_by_hand(video, module.norm)
    torch.testing.assert_close(normed_input_of(module, video), expected, atol=1e-4, rtol=1e-4)


def test_the_pooled_norm_is_not_what_the_weights_expect(motion_unet):
    # The same check fails on diffusers' own module, which pools the window's frames.
    module = motion_unet.get_submodule("down_blocks.0.motion_modules.0")
    pooled = nn.GroupNorm(module.norm.num_groups, module.norm.num_channels, eps=module.norm.eps)
    pooled.load_state_dict(module.norm.state_dict())
    module.norm = pooled
    video = frames_that_differ(pooled.num_channels)
    difference = normed_input_of(module, video) - per_frame_group_norm_by_hand(video, pooled)
    assert difference.abs().max() > 0.5


def test_swapping_keeps_parameters_and_state_dict_keys(motion_unet):
    pooled = UNetMotionModel.from_config(motion_unet.config)
    pooled.load_state_dict(motion_unet.state_dict())
    before = {name: id(p) for name, p in pooled.named_parameters()}
    keys = list(pooled.state_dict())
    assert use_per_frame_motion_norm(pooled) == 21
    assert {name: id(p) for name, p in pooled.named_parameters()} == before
    assert list(pooled.state_dict()) == keys
    assert use_per_frame_motion_norm(pooled) == 21 and uses_per_frame_motion_norm(pooled)  # idempotent


def test_frame_group_norm_on_images_is_plain_group_norm():
    norm = FrameGroupNorm(4, 8)
    images = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(norm(images), nn.GroupNorm(4, 8)(images))


def test_the_pooled_variant_is_a_setting_saved_with_the_pipeline(tmp_path):
    from animate_backend.pipeline import AnimateAnyonePipeline
    from animate_backend.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(seed=0)
    components = {name: getattr(pipe, name) for name in pipe.components}
    # A fresh denoising UNet (diffusers' pooled modules) in a pipeline that asks for "pooled".
    components["denoising_unet"] = UNetMotionModel.from_config(pipe.denoising_unet.config)
    pooled = AnimateAnyonePipeline(**components, motion_norm="pooled")
    assert not any(isinstance(n, FrameGroupNorm) for n in motion_module_norms(pooled.denoising_unet).values())
    pooled.save_pretrained(tmp_path)
    loaded = AnimateAnyonePipeline.from_pretrained(tmp_path)
    assert loaded.config.motion_norm == "pooled"
    assert not uses_per_frame_motion_norm(loaded.denoising_unet)
    with pytest.raises(ValueError, match="per_frame, pooled"):
        set_motion_norm(loaded.denoising_unet, "framewise")
