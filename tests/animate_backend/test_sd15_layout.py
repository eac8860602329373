"""The SD 1.5-size model has exactly the layout of the released Moore-AnimateAnyone weights.

The conversion tests run on tiny models; these check, at the real size, that the files users
have (docs/model.md, "Checkpoints and conversion") would place completely: the same keys, the same module counts,
and parameter counts equal to the published file sizes at fp32. Models are built on the meta
device (shapes only, no memory), so this takes seconds.
"""

from __future__ import annotations

import re

import pytest
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from animate_backend.configs import build_denoising_unet, load_size_config
from animate_backend.convert_moore import moore_motion_key, ours_to_moore_motion_key
from animate_backend.models.pose_guider import PoseGuider
from animate_backend.models.reference_attention import spatial_self_attention_names

FP32_BYTES = 4


@pytest.fixture(scope="module")
def sd15():
    config = load_size_config("sd15")
    with init_empty_weights():
        denoising = build_denoising_unet(config["unet"], config["motion"])
        reference = UNet2DConditionModel.from_config(config["unet"])
        pose_guider = PoseGuider(**config["pose_guider"])
    state = denoising.state_dict()
    motion = {key: value for key, value in state.items() if ".motion_modules." in key}
    spatial = {key: value for key, value in state.items() if ".motion_modules." not in key}
    return denoising, reference, pose_guider, motion, spatial


def numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def test_denoising_unet_spatial_weights_are_an_sd15_unet(sd15):
    _, reference, _, _, spatial = sd15
    # denoising_unet.pth holds SD UNet keys: they must be exactly our spatial keys.
    assert set(spatial) == set(reference.state_dict())
    for key in (
        "conv_in.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        "up_blocks.3.resnets.2.time_emb_proj.bias",
        "conv_out.weight",
    ):
        assert key in spatial
    # 3.44 GB of fp32 in the released file.
    assert numel(spatial.values()) * FP32_BYTES == pytest.approx(3.44e9, rel=0.005)


def test_motion_modules_follow_every_resnet_attention_pair_and_the_mid_block(sd15):
    _, _, _, motion, _ = sd15
    modules = {re.match(r"^(.+?\.motion_modules\.\d+)\.", key)[1] for key in motion}
    assert len(modules) == 21  # 4 down blocks x 2, mid block x 1, 4 up blocks x 3
    assert sum(module.startswith("mid_block.") for module in modules) == 1
    # motion_module.pth is 1.82 GB of fp32 (its positional tables included).
    assert numel(motion.values()) * FP32_BYTES == pytest.approx(1.82e9, rel=0.005)


def test_motion_keys_map_one_to_one_onto_moores_naming(sd15):
    _, _, _, motion, _ = sd15
    moore_suffixes = set()
    for key in motion:
        if key.endswith(".pos_embed.pe"):
            continue  # a fixed table, checked against Moore's pos_encoder.pe but not loaded
        moore_key = ours_to_moore_motion_key(key)
        assert moore_motion_key(moore_key) == (key, False)
        moore_suffixes.add(re.sub(r"^.+?\.temporal_transformer\.", "", moore_key))
    # The key pattern of motion_module.pth, spelled out as docs/model.md gives it.
    expected = {f"{part}.{kind}" for part in ("norm", "proj_in", "proj_out") for kind in ("weight", "bias")}
    block = "transformer_blocks.0"
    for k in (0, 1):
        expected |= {f"{block}.attention_blocks.{k}.{proj}.weight" for proj in ("to_q", "to_k", "to_v", "to_out.0")}
        expected.add(f"{block}.attention_blocks.{k}.to_out.0.bias")
        expected |= {f"{block}.norms.{k}.{kind}" for kind in ("weight", "bias")}
    expected |= {f"{block}.{part}.{kind}" for part in ("ff.net.0.proj", "ff.net.2", "ff_norm") for kind in ("weight", "bias")}
    assert moore_suffixes == expected
    positional = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    assert moore_motion_key(positional) == ("down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe", True)


def test_reference_attention_pairs_all_sixteen_spatial_blocks(sd15):
    denoising, reference, _, _, _ = sd15
    readers = spatial_self_attention_names(denoising)
    assert len(readers) == 16
    assert sorted(readers) == sorted(spatial_self_attention_names(reference))
    assert not any("motion_modules" in name for name in readers)


def test_pose_guider_is_the_released_size_and_feeds_conv_in(sd15):
    denoising, _, pose_guider, _, _ = sd15
    assert pose_guider.config.conditioning_embedding_channels == denoising.config.block_out_channels[0] == 320
    assert {key.split(".")[0] for key in pose_guider.state_dict()} == {"conv_in", "blocks", "conv_out"}
    # pose_guider.pth is 4.35 MB of fp32.
    assert numel(pose_guider.parameters()) == 1_086_480
    assert numel(pose_guider.parameters()) * FP32_BYTES == pytest.approx(4.35e6, rel=0.005)
