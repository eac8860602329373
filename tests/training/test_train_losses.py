"""Loss weights, targets and noise of diffusion training."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from animate_backend.train.losses import diffusion_loss, min_snr_weights, offset_noise, training_target


def test_min_snr_weight_for_v_prediction_is_clipped_snr_over_snr_plus_one():
    snr = torch.tensor([0.0, 0.5, 1.0, 5.0, 20.0])
    weights = min_snr_weights(snr, gamma=5.0, prediction_type="v_prediction")
    expected = torch.tensor([0.0, 0.5 / 1.5, 1.0 / 2.0, 5.0 / 6.0, 5.0 / 21.0])
    torch.testing.assert_close(weights, expected)


def test_min_snr_weight_for_epsilon_is_clipped_snr_over_snr_with_its_limit_at_zero():
    snr = torch.tensor([0.0, 0.5, 5.0, 20.0])
    weights = min_snr_weights(snr, gamma=5.0, prediction_type="epsilon")
    torch.testing.assert_close(weights, torch.tensor([1.0, 1.0, 1.0, 0.25]))


def test_min_snr_rejects_unknown_prediction_types():
    with pytest.raises(ValueError, match="sample"):
        min_snr_weights(torch.ones(2), 5.0, "sample")


def test_weighted_loss_matches_per_sample_formula_on_a_zero_terminal_snr_schedule():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction", rescale_betas_zero_snr=True)
    timesteps = torch.tensor([0, 500, 999])
    prediction = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    target = torch.zeros_like(prediction)
    snr = compute_snr(scheduler, timesteps)
    per_sample = (prediction ** 2).mean(dim=(1, 2, 3))
    expected = (per_sample * torch.clamp(snr, max=5.0) / (snr + 1)).mean()
    loss = diffusion_loss(prediction, target, timesteps, scheduler, snr_gamma=5.0)
    torch.testing.assert_close(loss, expected)
    # The last timestep has (almost) zero SNR, so (almost) zero weight for v-prediction.
    assert snr[2] < 1e-6
    assert diffusion_loss(prediction[2:], target[2:], timesteps[2:], scheduler, 5.0) < 1e-6


def test_v_prediction_target_is_alpha_noise_minus_sigma_latents():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 700])
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(2, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    torch.testing.assert_close(training_target(scheduler, latents, noise, timesteps), expected)
    eps = DDPMScheduler(prediction_type="epsilon")
    assert training_target(eps, latents, noise, timesteps) is noise


def test_offset_noise_adds_one_constant_per_sample_and_channel_shared_by_frames_and_pixels():
    shape = (2, 4, 3, 8, 8)  # a clip batch: (B, C, F, h, w)
    plain = offset_noise(shape, 0.0, torch.Generator().manual_seed(1), "cpu")
    shifted = offset_noise(shape, 0.1, torch.Generator().manual_seed(1), "cpu")
    difference = shifted - plain
    per_channel = difference[:, :, :1, :1, :1]
    torch.testing.assert_close(difference, per_channel.expand(shape))
    assert per_channel.abs().max() > 0
    # Reproducible from the generator alone.
    torch.testing.assert_close(shifted, offset_noise(shape, 0.1, torch.Generator().manual_seed(1), "cpu"))
