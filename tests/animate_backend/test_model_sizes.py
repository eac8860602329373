"""Model sizes from configs: the demo size and a size file build models of the shapes they say."""

import json

import numpy as np
import pytest
import torch

from animate_backend.configs import load_size_config
from animate_backend.tiny import make_random_pipeline


def test_the_demo_size_builds_a_pipeline_with_a_downscale_4_vae():
    config = load_size_config("demo")
    pipe = make_random_pipeline("demo", seed=0)
    assert pipe.vae_scale_factor == 4
    assert list(pipe.denoising_unet.config.block_out_channels) == config["unet"]["block_out_channels"] == [32, 64, 128]
    assert list(pipe.reference_unet.config.block_out_channels) == [32, 64, 128]
    assert pipe.image_encoder.config.projection_dim == pipe.denoising_unet.config.cross_attention_dim == 64
    with torch.no_grad():
        latents = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        features = pipe.pose_guider(torch.zeros(1, 3, 64, 64))
    assert latents.shape == (1, 4, 16, 16)
    assert features.shape == (1, 32, 16, 16)
    # Motion modules at every level and the mid block, as in the released layout.
    assert len(pipe.denoising_unet.down_blocks) == 3
    reference = np.full((64, 64, 3), 128, dtype=np.uint8)
    skeletons = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    out = pipe(reference, skeletons, height=64, width=64, num_inference_steps=1, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 2, 64, 64, 3)
    # User latents have the VAE's own factor (4 here, not SD's 8).
    latents = torch.zeros(1, 4, 2, 16, 16)
    out = pipe(reference, skeletons, height=64, width=64, num_inference_steps=1, output_type="latent", latents=latents)
    assert out.frames.shape == (1, 4, 2, 16, 16)


def test_a_size_file_sets_widths_layers_heads_and_latent_channels(tmp_path):
    config = load_size_config("tiny")
    config["unet"].update(block_out_channels=[16, 32, 32, 48], layers_per_block=1, attention_head_dim=2,
                          in_channels=8, out_channels=8)
    config["vae"].update(latent_channels=8, block_out_channels=[8, 8, 16, 16])
    config["pose_guider"]["conditioning_embedding_channels"] = 16
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(config))
    pipe = make_random_pipeline(path, seed=0)
    unet = pipe.denoising_unet
    assert list(unet.config.block_out_channels) == [16, 32, 32, 48]
    assert len(unet.down_blocks[0].resnets) == 1
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 2
    assert unet.config.in_channels == pipe.vae.config.latent_channels == 8


def test_a_size_whose_parts_disagree_is_refused_with_the_reason(tmp_path):
    config = load_size_config("demo")
    config["pose_guider"]["block_out_channels"] = [16, 32, 64, 64]  # downscales by 8, the VAE by 4
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Pose Guider downscales by 8 but the VAE by 4"):
        load_size_config(path)
    with pytest.raises(ValueError, match="unknown model size"):
        load_size_config("huge")
