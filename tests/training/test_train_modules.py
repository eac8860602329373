"""The trained module: conditioning dropout is the sampler's unconditional branch; gradient
checkpointing gives the same gradients, ReferenceNet included."""

import pytest
import torch

from animate_backend.train.config import TrainConfig
from animate_backend.train.modules import AnimateAnyoneTrainingModule
from animate_backend.train.models import build_stage_models, set_trainable


def stage_models(stage: int):
    config = TrainConfig(stage=stage)
    config.model.tiny = True
    models = build_stage_models(config)
    set_trainable(models, stage)
    return models


def inputs(stage: int, seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    latents_shape = (batch, 4, 8, 8) if stage == 1 else (batch, 4, 3, 8, 8)
    pose_shape = (batch, 3, 64, 64) if stage == 1 else (batch, 3, 3, 64, 64)
    return dict(
        noisy_latents=torch.randn(latents_shape, generator=g),
        timesteps=torch.tensor([10, 600])[:batch],
        reference_latents=torch.randn(batch, 4, 8, 8, generator=g),
        clip_embeds=torch.randn(batch, 1, 32, generator=g),
        pose_images=torch.rand(pose_shape, generator=g),
    )


@pytest.mark.parametrize("stage", [1, 2])
def test_dropped_samples_ignore_the_reference_and_see_a_zero_clip_embedding(stage):
    models = stage_models(stage)
    torch.nn.init.normal_(models.pose_guider.conv_out.weight, std=0.05)  # make the pose visible
    module = AnimateAnyoneTrainingModule(models.reference_unet, models.denoising_unet, models.pose_guider).eval()
    conditioned = torch.tensor([False, True])
    x = inputs(stage)
    with torch.no_grad():
        first = module(**x, conditioned=conditioned)
        other_reference = dict(x, reference_latents=torch.randn_like(x["reference_latents"]),
                               clip_embeds=torch.randn_like(x["clip_embeds"]))
        second = module(**other_reference, conditioned=conditioned)
    # The dropped sample does not depend on the reference image at all; the kept one does.
    torch.testing.assert_close(first[0], second[0])
    assert not torch.allclose(first[1], second[1], atol=1e-4)

    # And it is exactly the sampler's unconditional branch: plain self-attention (reading
    # disabled) with a zero CLIP embedding and the same pose features.
    unet = models.denoising_unet
    with torch.no_grad(), module.bank.reading_disabled():
        frames = 1 if stage == 1 else x["noisy_latents"].shape[2]
        pose_rows = x["pose_images"][:1].reshape(-1, 3, 64, 64)
        module.pose_injector.set(models.pose_guider(pose_rows))
        expected = unet(x["noisy_latents"][:1], x["timesteps"][:1],
                        encoder_hidden_states=torch.zeros(frames, 1, 32)).sample
        module.pose_injector.clear()
    torch.testing.assert_close(first[0:1], expected, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients_reference_net_included():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        models = stage_models(1)
        torch.nn.init.normal_(models.pose_guider.conv_out.weight, std=0.05)
        if checkpointing:
            models.denoising_unet.enable_gradient_checkpointing()
            models.reference_unet.enable_gradient_checkpointing()
        module = AnimateAnyoneTrainingModule(models.reference_unet, models.denoising_unet, models.pose_guider)
        module.train()
        prediction = module(**inputs(1), conditioned=torch.tensor([True, True]))
        prediction.square().mean().backward()
        module.bank.clear()
        grads.append({name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys()
    # The reference reaches the loss only through attention: its first block gets gradients.
    ref_key = "reference_unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert ref_key in plain and plain[ref_key].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-7, msg=name)


def test_stage2_trains_only_motion_modules():
    models = stage_models(2)
    trainable = [n for n, p in models.denoising_unet.named_parameters() if p.requires_grad]
    assert trainable and all("motion_modules" in n for n in trainable)
    for module in (models.reference_unet, models.pose_guider, models.vae, models.image_encoder):
        assert not any(p.requires_grad for p in module.parameters())


def test_each_micro_step_sees_only_its_own_reference():
    # Gradient accumulation runs several forwards before one optimizer step; every forward
    # must read the reference of its own batch, never tokens or keys/values left by the last.
    models = stage_models(1)
    module = AnimateAnyoneTrainingModule(models.reference_unet, models.denoising_unet, models.pose_guider).eval()
    conditioned = torch.tensor([True, True])
    first, second = inputs(1, seed=1), inputs(1, seed=2)
    with torch.no_grad():
        alone = module(**second, conditioned=conditioned)
        module(**first, conditioned=conditioned)
        after_another = module(**second, conditioned=conditioned)
    torch.testing.assert_close(after_another, alone, rtol=0, atol=0)
