"""The trainable part of Animate Anyone as one torch module, for `accelerator.prepare`.

ReferenceNet, denoising UNet and Pose Guider run together in one forward, so one
`prepare`d module (DDP, DeepSpeed, FSDP alike) holds every trained weight.

Conditioning dropout is the sampler's unconditional branch exactly: the samples chosen
for dropout get a zero CLIP embedding and do not read the reference (plain
self-attention), through the reference bank's `reading_samples` mask. The mask is per
sample, so one batch mixes conditional and unconditional samples, as the pipeline's
classifier-free-guidance batch does.
"""

from __future__ import annotations

import torch
from torch import nn

from animate_backend.models.pose_guider import PoseFeatureInjector
from animate_backend.models.reference_attention import ReferenceBank, ReferenceReader, install_reference_attention


class TrainingReferenceBank(ReferenceBank):
    """A reference bank that ignores writes while `frozen`.

    With gradient checkpointing, backward re-runs the ReferenceNet's transformer blocks and
    so its writers. The training module freezes the bank between its forward and the end of
    the micro-step (where the loop clears it), so whatever order autograd recomputes blocks
    in, every reader re-run in backward sees the bank of the forward pass.
    (The readers' keys/values are projected before the denoising UNet runs for the same
    reason: projected inside a checkpointed block on the first call and taken from the
    cache on recomputation, torch's checkpoint would find different saved tensors.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def write(self, layer: str, tokens: torch.Tensor) -> None:
        if not self.frozen:
            super().write(layer, tokens)

    def clear(self) -> None:
        super().clear()
        self.frozen = False


class AnimateAnyoneTrainingModule(nn.Module):
    """reference_unet + denoising_unet + pose_guider; forward returns the denoising prediction.

    Stage 1: `noisy_latents` (B, 4, h, w) for a UNet2DConditionModel, `pose_images` (B, 3, H, W).
    Stage 2: `noisy_latents` (B, 4, F, h, w) for a UNetMotionModel, `pose_images` (B, F, 3, H, W).
    """

    def __init__(self, reference_unet: nn.Module, denoising_unet: nn.Module, pose_guider: nn.Module):
        super().__init__()
        self.reference_unet = reference_unet
        self.denoising_unet = denoising_unet
        self.pose_guider = pose_guider
        self.bank = install_reference_attention(reference_unet, denoising_unet, bank=TrainingReferenceBank())
        self.pose_injector = PoseFeatureInjector(denoising_unet)
        self._readers = [
            (module, processor)
            for name, module in denoising_unet.named_modules()
            if isinstance(processor := getattr(module, "processor", None), ReferenceReader)
        ]

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        reference_latents: torch.Tensor,
        clip_embeds: torch.Tensor,
        pose_images: torch.Tensor,
        conditioned: torch.Tensor,
    ) -> torch.Tensor:
        """`conditioned` (B,) bool: False marks the samples trained as the unconditional branch."""
        batch = noisy_latents.shape[0]
        # The unconditional branch: zero CLIP embedding (not the CLIP of a black image).
        clip_embeds = clip_embeds * conditioned.to(clip_embeds.dtype).view(batch, 1, 1)

        self.bank.clear()
        reference_timesteps = torch.zeros(batch, dtype=torch.long, device=noisy_latents.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._trains(self.reference_unet)):
            self.reference_unet(reference_latents, reference_timesteps, encoder_hidden_states=clip_embeds)
        # Per-sample switch; None (everyone reads) takes the readers' faster unmasked path.
        self.bank.reading_samples = None if bool(conditioned.all()) else conditioned
        # Project the reference tokens once, outside any checkpointed block, so that the
        # forward pass and a checkpoint recomputation use the very same keys and values.
        for attention, reader in self._readers:
            reader.reference_key_value(attention)

        pose_rows = pose_images.reshape(-1, *pose_images.shape[-3:])
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._trains(self.pose_guider)):
            features = self.pose_guider(pose_rows.to(self._dtype(self.pose_guider)))
        self.pose_injector.set(features)
        try:
            context = clip_embeds
            if noisy_latents.ndim == 5:  # UNetMotionModel wants one context row per frame
                context = clip_embeds.repeat_interleave(noisy_latents.shape[2], dim=0)
            prediction = self.denoising_unet(noisy_latents, timesteps, encoder_hidden_states=context).sample
        finally:
            self.pose_injector.clear()
            self.bank.frozen = True  # backward may re-run writers; keep this micro-step's tokens
        return prediction

    @staticmethod
    def _trains(module: nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    @staticmethod
    def _dtype(module: nn.Module) -> torch.dtype:
        return next(module.parameters()).dtype
