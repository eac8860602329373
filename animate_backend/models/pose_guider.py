"""The Pose Guider: a small conv net that turns a skeleton image into UNet features.

Layer spec of the released Moore-AnimateAnyone weights (docs/model.md, "Parts"): 3x3
convolutions with padding 1 and SiLU after each but the last,

    conv_in  3 -> 16
    blocks.0 16 -> 16 (stride 1), blocks.1 16 -> 32 (stride 2),
    blocks.2 32 -> 32 (stride 1), blocks.3 32 -> 96 (stride 2),
    blocks.4 96 -> 96 (stride 1), blocks.5 96 -> 256 (stride 2),
    conv_out 256 -> 320 (zero-initialised)

so a skeleton at full pixel resolution comes out at latent resolution (1/8) with as many
channels as the denoising UNet's first block. The features are added to the output of
the denoising UNet's `conv_in` (not to the 4-channel noise): `PoseFeatureInjector` does
that with a forward hook, so the UNet's weights, state-dict keys and forward stay diffusers'.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F


class PoseGuider(ModelMixin, ConfigMixin):
    """Skeleton image (N, 3, H, W) in [0, 1] -> features (N, conditioning_embedding_channels, H/8, W/8).

    Args:
        conditioning_embedding_channels: output channels; must equal the denoising UNet's
            `block_out_channels[0]` (320 for SD 1.5).
        conditioning_channels: input image channels (3, RGB skeletons).
        block_out_channels: channels of conv_in and of each resolution level; every level
            after the first halves the resolution. (16, 32, 96, 256) is the released spec.
    """

    @register_to_config
    def __init__(
        self,
        conditioning_embedding_channels: int = 320,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList([])
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(channels_in, channels_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        # Zero output at initialisation: a fresh Pose Guider leaves the UNet's behaviour unchanged.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downscale_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            hidden = F.silu(block(hidden))
        return self.conv_out(hidden)


class PoseFeatureInjector:
    """Adds pose features to the output of a UNet's `conv_in`, through a forward hook.

    Usage (pipeline and training loops alike)::

        injector = PoseFeatureInjector(denoising_unet)   # registers the hook once
        injector.set(features)                            # before each UNet call
        noise_pred = denoising_unet(...)
        injector.clear()                                  # features no longer held
        injector.remove()                                 # unregisters the hook

    `features` may be given
      * as a video, (B, C, F, h, w) like the latents: for `UNetMotionModel`, whose conv_in sees
        (B*F, C, h, w) rows ordered sample by sample; or
      * as rows, (N, C, h, w): exactly the conv_in rows (a plain `UNet2DConditionModel` in
        training stage 1, where N is the batch).
    When the UNet's batch is a whole multiple of the features' (classifier-free guidance runs
    the unconditional and the conditional halves in one batch, with the same pose), the
    features are repeated to fill it. With no features set, conv_in's output is unchanged.
    """

    def __init__(self, unet: nn.Module):
        self.features: torch.Tensor | None = None
        self._handle = unet.conv_in.register_forward_hook(self._add_features)

    def set(self, features: torch.Tensor) -> None:
        if features.ndim == 5:
            batch, channels, frames, height, width = features.shape
            features = features.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        elif features.ndim != 4:
            raise ValueError(f"pose features must be (B, C, F, h, w) or (N, C, h, w), got shape {tuple(features.shape)}")
        self.features = features

    def clear(self) -> None:
        self.features = None

    def remove(self) -> None:
        self.features = None
        self._handle.remove()

    def _add_features(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.features is None:
            return output
        features = self.features
        if output.shape[1:] != features.shape[1:] or output.shape[0] % features.shape[0] != 0:
            raise ValueError(
                f"pose features of shape {tuple(features.shape)} do not fit the UNet's conv_in output "
                f"{tuple(output.shape)}: check the Pose Guider's output channels and the frame count"
            )
        repeats = output.shape[0] // features.shape[0]
        if repeats > 1:
            features = features.repeat(repeats, 1, 1, 1)
        return output + features.to(output.dtype)
