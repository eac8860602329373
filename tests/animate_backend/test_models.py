"""The model parts: Pose Guider, pose hook, reference-attention writer and reader."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch.nn import functional as F

from animate_backend.configs import load_size_config
from animate_backend.models.context_attention import SingleTokenCrossAttention
from animate_backend.models import (
    PoseFeatureInjector,
    PoseGuider,
    ReferenceBank,
    ReferenceReader,
    ReferenceWriter,
    install_reference_attention,
    remove_reference_attention,
    spatial_self_attention_names,
)


def test_pose_guider_has_the_released_layout():
    guider = PoseGuider()
    shapes = {key: tuple(value.shape) for key, value in guider.state_dict().items()}
    assert shapes == {
        "conv_in.weight": (16, 3, 3, 3), "conv_in.bias": (16,),
        "blocks.0.weight": (16, 16, 3, 3), "blocks.0.bias": (16,),
        "blocks.1.weight": (32, 16, 3, 3), "blocks.1.bias": (32,),
        "blocks.2.weight": (32, 32, 3, 3), "blocks.2.bias": (32,),
        "blocks.3.weight": (96, 32, 3, 3), "blocks.3.bias": (96,),
        "blocks.4.weight": (96, 96, 3, 3), "blocks.4.bias": (96,),
        "blocks.5.weight": (256, 96, 3, 3), "blocks.5.bias": (256,),
        "conv_out.weight": (320, 256, 3, 3), "conv_out.bias": (320,),
    }
    assert [guider.blocks[i].stride for i in range(6)] == [(1, 1), (2, 2)] * 3


def test_pose_guider_outputs_latent_resolution_and_starts_at_zero():
    guider = PoseGuider(conditioning_embedding_channels=32, block_out_channels=(4, 8, 8, 16))
    features = guider(torch.rand(2, 3, 64, 48))
    assert features.shape == (2, 32, 8, 6)
    assert torch.count_nonzero(features) == 0  # zero-initialised conv_out


def test_pose_features_are_added_after_conv_in_for_every_frame(tiny_pipe):
    unet = copy.deepcopy(tiny_pipe.denoising_unet)
    keys_before = set(unet.state_dict())
    injector = PoseFeatureInjector(unet)
    assert set(unet.state_dict()) == keys_before

    frames, channels = 3, unet.config.block_out_channels[0]
    rows = torch.randn(2 * frames, 4, 8, 8)  # CFG batch: 2 samples x 3 frames, sample-major rows
    features = torch.randn(1, channels, frames, 8, 8)  # one video's pose features
    plain = unet.conv_in(rows)
    injector.set(features)
    hooked = unet.conv_in(rows)
    per_frame = features[0].permute(1, 0, 2, 3)  # (F, C, h, w)
    torch.testing.assert_close(hooked, plain + torch.cat([per_frame, per_frame]))

    injector.clear()
    torch.testing.assert_close(unet.conv_in(rows), plain)
    injector.set(torch.randn(1, channels, 4, 8, 8))  # 4 frames cannot fill 6 rows
    with pytest.raises(ValueError, match="do not fit"):
        unet.conv_in(rows)
    injector.remove()
    torch.testing.assert_close(unet.conv_in(rows), plain)


def _attention(dim: int = 32, heads: int = 4) -> Attention:
    torch.manual_seed(1)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True)


def _concatenated_attention_by_hand(attn: Attention, tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """What the reader must compute: self-attention over [own tokens, reference tokens]."""
    heads = attn.heads
    context = torch.cat([tokens, reference.expand(tokens.shape[0], -1, -1)], dim=1)
    q, k, v = attn.to_q(tokens), attn.to_k(context), attn.to_v(context)
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    out = out.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[1], -1)
    return attn.to_out[0](out)


def test_reader_with_cached_reference_keys_equals_concatenated_attention():
    attn = _attention()
    bank = ReferenceBank()
    reference = torch.randn(1, 10, 32)
    bank.write("layer", reference)
    attn.set_processor(ReferenceReader(bank, "layer"))
    tokens = torch.randn(6, 16, 32)  # 6 frames of 16 tokens
    with torch.no_grad():
        torch.testing.assert_close(attn(tokens), _concatenated_attention_by_hand(attn, tokens, reference))


def test_reader_projects_reference_tokens_once_until_the_bank_changes():
    attn = _attention()
    bank = ReferenceBank()
    bank.write("layer", torch.randn(1, 10, 32))
    attn.set_processor(ReferenceReader(bank, "layer"))
    key_inputs: list[int] = []
    attn.to_k.register_forward_hook(lambda module, inputs, output: key_inputs.append(inputs[0].shape[1]))
    with torch.no_grad():
        for _ in range(3):  # three frames' worth of calls, e.g. three steps
            attn(torch.randn(4, 16, 32))
        assert key_inputs.count(10) == 1 and key_inputs.count(16) == 3
        new_reference = torch.randn(1, 10, 32)
        bank.write("layer", new_reference)
        tokens = torch.randn(4, 16, 32)
        out = attn(tokens)
    assert key_inputs.count(10) == 2
    torch.testing.assert_close(out, _concatenated_attention_by_hand(attn, tokens, new_reference))


def test_reader_gives_unconditional_samples_plain_self_attention():
    attn = _attention()
    bank = ReferenceBank()
    reference = torch.randn(1, 10, 32)
    bank.write("layer", reference)
    tokens = torch.randn(2 * 3, 16, 32)  # [uncond sample, cond sample] x 3 frames
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        plain = attn(tokens)
        attn.set_processor(ReferenceReader(bank, "layer"))
        bank.reading_samples = (False, True)
        mixed = attn(tokens)
        bank.reading_samples = None
        with bank.reading_disabled():
            disabled = attn(tokens)
    torch.testing.assert_close(mixed[:3], plain[:3])
    torch.testing.assert_close(mixed[3:], _concatenated_attention_by_hand(attn, tokens[3:], reference))
    torch.testing.assert_close(disabled, plain)


def test_reader_pairs_a_batch_of_references_with_a_batch_of_samples():
    """Sample s reads reference s % B_ref: two videos, each with its own reference, under CFG."""
    attn = _attention()
    bank = ReferenceBank()
    references = torch.randn(2, 10, 32)
    bank.write("layer", references)
    attn.set_processor(ReferenceReader(bank, "layer"))
    tokens = torch.randn(4 * 2, 16, 32)  # samples [uncond a, uncond b, cond a, cond b] x 2 frames
    bank.reading_samples = (False, False, True, True)
    with torch.no_grad():
        out = attn(tokens)
        attn.set_processor(AttnProcessor2_0())
        plain = attn(tokens[:4])
    torch.testing.assert_close(out[:4], plain)
    torch.testing.assert_close(out[4:6], _concatenated_attention_by_hand(attn, tokens[4:6], references[:1]))
    torch.testing.assert_close(out[6:8], _concatenated_attention_by_hand(attn, tokens[6:8], references[1:]))


def test_reader_needs_a_written_bank():
    attn = _attention()
    bank = ReferenceBank()
    attn.set_processor(ReferenceReader(bank, "layer"))
    with pytest.raises(RuntimeError, match="run the ReferenceNet"):
        attn(torch.randn(2, 16, 32))


def test_writer_stores_the_attn1_input_and_self_attends():
    attn = _attention()
    bank = ReferenceBank()
    tokens = torch.randn(1, 16, 32)
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        plain = attn(tokens)
        attn.set_processor(ReferenceWriter(bank, "layer"))
        out = attn(tokens)
    assert bank.tokens["layer"] is tokens
    torch.testing.assert_close(out, plain)
    version = bank.version
    bank.clear()
    assert bank.tokens == {} and bank.version > version


def test_processors_go_on_the_16_spatial_self_attentions_only(tiny_pipe):
    denoising = tiny_pipe.denoising_unet
    names = spatial_self_attention_names(denoising)
    assert len(names) == 16
    assert names == spatial_self_attention_names(tiny_pipe.reference_unet)
    for name, processor in denoising.attn_processors.items():
        layer = name.removesuffix(".processor")
        if layer in names:
            assert isinstance(processor, ReferenceReader) and processor.layer == layer
        elif ".attentions." in f".{layer}":  # the cross-attention to the one CLIP token
            assert layer.endswith(".attn2") and isinstance(processor, SingleTokenCrossAttention)
        else:  # all 42 motion-module attentions keep diffusers' processor
            assert isinstance(processor, AttnProcessor2_0)
    motion = [n for n in denoising.attn_processors if ".motion_modules." in n]
    assert len(motion) == 21 * 2
    for name, processor in tiny_pipe.reference_unet.attn_processors.items():
        layer = name.removesuffix(".processor")
        expected = ReferenceWriter if layer in names else SingleTokenCrossAttention
        assert isinstance(processor, expected)


def test_reference_attention_on_a_stage_one_unet_and_disabled_reading_is_plain_self_attention():
    """Training stage 1 uses a plain UNet2DConditionModel as the denoising UNet."""
    config = load_size_config("tiny")["unet"]
    torch.manual_seed(0)
    reference_unet = UNet2DConditionModel(**config).eval()
    denoising_unet = UNet2DConditionModel(**config).eval()
    bank = install_reference_attention(reference_unet, denoising_unet)
    reference_latent = torch.randn(1, 4, 8, 8)
    noisy = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 1, 32)
    with torch.no_grad():
        reference_unet(reference_latent, 0, encoder_hidden_states=context[:1])
        assert len(bank.tokens) == 16
        with_reference = denoising_unet(noisy, 10, encoder_hidden_states=context).sample
        with bank.reading_disabled():
            without_reference = denoising_unet(noisy, 10, encoder_hidden_states=context).sample
        remove_reference_attention(reference_unet, denoising_unet)
        default = denoising_unet(noisy, 10, encoder_hidden_states=context).sample
    torch.testing.assert_close(without_reference, default)
    assert not torch.allclose(with_reference, default, atol=1e-4)
    assert all(isinstance(p, AttnProcessor2_0) for p in denoising_unet.attn_processors.values())


def test_install_refuses_unets_with_different_layouts():
    config = load_size_config("tiny")["unet"]
    smaller = {**config, "layers_per_block": 1}
    with pytest.raises(ValueError, match="same UNet config"):
        install_reference_attention(UNet2DConditionModel(**config), UNet2DConditionModel(**smaller))
