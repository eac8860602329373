"""Noise, targets and loss weights of diffusion training.

Min-SNR weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
Strategy"): the per-timestep loss weight clips the signal-to-noise ratio at `gamma`.
The weight depends on what the network predicts, because the same clipped weight on
the *x0* error becomes a different factor on the epsilon or v error:

    epsilon prediction:  w = min(snr, gamma) / snr
    v prediction:        w = min(snr, gamma) / (snr + 1)

(Moore-AnimateAnyone's v-prediction branch uses the epsilon formula plus one, which is
not the paper's weight; see docs/model.md, "Training".)
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Loss weight per sample for min-SNR-gamma weighting.

    `snr` is alpha_bar / (1 - alpha_bar) of each sample's timestep. A zero SNR (the last
    timestep of a zero-terminal-SNR schedule) is handled as its limit: the epsilon weight
    tends to 1 and the v weight is 0.
    """
    snr = snr.float()
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    if prediction_type == "epsilon":
        safe = torch.where(snr > 0, snr, torch.ones_like(snr))
        return torch.where(snr > 0, clipped / safe, torch.ones_like(snr))
    raise ValueError(f"min-SNR weighting supports 'epsilon' and 'v_prediction', not {prediction_type!r}")


def offset_noise(
    shape: tuple[int, ...],
    noise_offset: float,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise plus a per-sample, per-channel constant of scale `noise_offset`.

    The offset ("offset noise", Guttenberg 2023) lets the model change the mean brightness
    of an image, which plain noise at every timestep hides. For clips (B, C, F, H, W) the
    offset is shared by all frames of a clip, like a colour shift of the whole shot.
    The noise is drawn on the CPU from `generator` so that runs are reproducible on any
    device, then moved.
    """
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if noise_offset:
        offset_shape = (shape[0], shape[1]) + (1,) * (len(shape) - 2)
        noise = noise + noise_offset * torch.randn(offset_shape, generator=generator, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def training_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network must predict, per the scheduler's prediction type."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"training supports 'epsilon' and 'v_prediction' schedulers, not {prediction_type!r}")


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler: DDPMScheduler,
    snr_gamma: float | None,
) -> torch.Tensor:
    """Mean squared error, optionally min-SNR weighted per sample (computed in float32)."""
    model_pred = model_pred.float()
    target = target.float()
    if not snr_gamma:
        return torch.nn.functional.mse_loss(model_pred, target, reduction="mean")
    per_sample = torch.nn.functional.mse_loss(model_pred, target, reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))
    snr = compute_snr(scheduler, timesteps.to(scheduler.alphas_cumprod.device))
    weights = min_snr_weights(snr, snr_gamma, scheduler.config.prediction_type).to(per_sample.device)
    return (per_sample * weights).mean()
