"""Cross-attention to the one CLIP token skips its queries and computes the same output."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from animate_backend.models.context_attention import (
    SingleTokenCrossAttention,
    install_single_token_cross_attention,
    spatial_cross_attention_names,
)
from animate_backend.models.reference_attention import replace_processors
from animate_backend.tiny import make_tiny_pipeline

# float32: the shortcut is the value path of the full computation, so only rounding differs.
TOLERANCE = 1e-5


def cross_attention_layer(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    layer = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, out_bias=True).eval()
    return layer


def test_one_context_token_gives_the_full_attention_output():
    layer = cross_attention_layer()
    hidden = torch.randn(6, 50, 32)
    context = torch.randn(6, 1, 24)
    full = AttnProcessor2_0()(layer, hidden, context)
    short = SingleTokenCrossAttention()(layer, hidden, context)
    assert short.shape == full.shape == (6, 50, 32)
    assert torch.allclose(short, full, atol=TOLERANCE, rtol=TOLERANCE)


def test_a_zero_context_gives_the_output_bias_everywhere():
    # The unconditional half of a guided batch has a zero CLIP embedding.
    layer = cross_attention_layer()
    short = SingleTokenCrossAttention()(layer, torch.randn(2, 10, 32), torch.zeros(2, 1, 24))
    assert torch.allclose(short, layer.to_out[0].bias.expand_as(short), atol=TOLERANCE)


def test_longer_contexts_and_masks_go_to_the_general_processor():
    layer = cross_attention_layer()
    hidden = torch.randn(2, 10, 32)
    context = torch.randn(2, 3, 24)
    assert not SingleTokenCrossAttention.applies(layer, hidden, context, None)
    assert not SingleTokenCrossAttention.applies(layer, hidden, None, None)
    assert not SingleTokenCrossAttention.applies(layer, hidden, context[:, :1], torch.zeros(2, 10, 1))
    assert torch.equal(SingleTokenCrossAttention()(layer, hidden, context), AttnProcessor2_0()(layer, hidden, context))


def test_the_pipeline_uses_it_on_spatial_cross_attention_only():
    pipe = make_tiny_pipeline(seed=0)
    for unet in (pipe.reference_unet, pipe.denoising_unet):
        processors = unet.attn_processors
        cross = spatial_cross_attention_names(unet)
        assert cross, "the tiny UNets have spatial transformers"
        assert all(isinstance(processors[f"{name}.processor"], SingleTokenCrossAttention) for name in cross)
    motion = [name for name in pipe.denoising_unet.attn_processors if "motion_modules" in name]
    assert motion and not any(isinstance(pipe.denoising_unet.attn_processors[name], SingleTokenCrossAttention) for name in motion)


def test_the_pipeline_video_matches_diffusers_cross_attention(reference_image):
    size = 64
    skeletons = [np.zeros((size, size, 3), np.uint8) for _ in range(3)]
    for i, frame in enumerate(skeletons):
        frame[8:56, 10 + 12 * i : 18 + 12 * i] = (255, 85, 0)
    latents = torch.randn((1, 4, 3, size // 8, size // 8), generator=torch.Generator().manual_seed(0))

    def video(pipe):
        return pipe(reference_image, skeletons, height=size, width=size, num_inference_steps=2, guidance_scale=3.5,
                    latents=latents, output_type="np").frames

    fast = video(make_tiny_pipeline(seed=0))
    general = make_tiny_pipeline(seed=0)
    for unet in (general.reference_unet, general.denoising_unet):
        replace_processors(unet, spatial_cross_attention_names(unet), lambda layer: AttnProcessor2_0())
    assert np.abs(fast - video(general)).max() < 1e-4


def test_installing_counts_the_layers_and_can_be_repeated():
    pipe = make_tiny_pipeline(seed=0)
    count = len(spatial_cross_attention_names(pipe.denoising_unet)) + len(spatial_cross_attention_names(pipe.reference_unet))
    assert install_single_token_cross_attention(pipe.reference_unet, pipe.denoising_unet) == count
    assert install_single_token_cross_attention(pipe.reference_unet, pipe.denoising_unet) == count
