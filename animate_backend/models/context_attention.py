"""Cross-attention to a single context token, computed without its queries.

Both UNets cross-attend (`attn2` of every spatial transformer block) to the CLIP image
embedding, which is one token: `encoder_hidden_states` is (B, 1, 768). A softmax over one key
is exactly 1, so every query position receives that token's value unchanged, whatever the
query. The layer's output is therefore `to_out(to_v(context))`, the same vector at every
position of a row.

`SingleTokenCrossAttention` computes that vector once per row and broadcasts it. It skips
the query projection, the attention itself and all but one row of the output projection:
about 2 C^2 multiply-adds per token of the 22 C^2 a spatial transformer block costs, 2.6% of
the work of a denoising step at SD 1.5 widths (counted; docs/performance.md). The result is the
same arithmetic on the value path, so the same to float32 rounding. With more than one
context token, a mask, or an attention layer with normalisations on its inputs it hands the
call to diffusers' own processor.

The pipeline installs it for inference only. Training keeps diffusers' processor: there the
query and key weights of `attn2` get a zero gradient either way, but an optimizer still
applies weight decay to a parameter with a zero gradient and skips one whose gradient is None,
so the shortcut would change what training does.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from animate_backend.models.reference_attention import replace_processors, spatial_attention_names


class SingleTokenCrossAttention:
    """Attention processor: `to_out(to_v(context))` broadcast when the context is one token."""

    def __init__(self) -> None:
        self._general = AttnProcessor2_0()

    @staticmethod
    def applies(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states, attention_mask) -> bool:
        return (
            encoder_hidden_states is not None
            and encoder_hidden_states.ndim == 3
            and encoder_hidden_states.shape[1] == 1
            and hidden_states.ndim == 3
            and attention_mask is None
            and attn.spatial_norm is None
            and attn.group_norm is None
            and attn.norm_cross is None
        )

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.applies(attn, hidden_states, encoder_hidden_states, attention_mask):
            return self._general(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        # softmax over a single key is 1: each query's output is the value of that key.
        value = attn.to_v(encoder_hidden_states)  # (B, 1, inner)
        output = attn.to_out[1](attn.to_out[0](value)).to(hidden_states.dtype)  # (B, 1, C)
        output = output.expand(hidden_states.shape[0], hidden_states.shape[1], output.shape[2])
        if attn.residual_connection:
            output = output + hidden_states
        return output / attn.rescale_output_factor


def spatial_cross_attention_names(unet: nn.Module) -> list[str]:
    """Module names of the spatial transformers' cross-attention layers (`...attentions.N...attn2`).

    The motion modules' `attn2` (a second temporal self-attention) are not among them.
    """
    return spatial_attention_names(unet, "attn2")


def install_single_token_cross_attention(*unets: nn.Module) -> int:
    """Put `SingleTokenCrossAttention` on the spatial `attn2` layers of each UNet; returns how many."""
    installed = 0
    shared = SingleTokenCrossAttention()  # it holds no state
    for unet in unets:
        layers = spatial_cross_attention_names(unet)
        replace_processors(unet, layers, lambda layer: shared)
        installed += len(layers)
    return installed
