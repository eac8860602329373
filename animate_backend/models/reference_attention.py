"""Reference attention ("spatial attention" of the paper) as a pair of diffusers attention processors.

The ReferenceNet (a `UNet2DConditionModel`) runs on the clean reference latent. In each of its
spatial transformer blocks a `ReferenceWriter` processor, installed on `attn1`, stores the
layer's input (the `norm1` output: the reference tokens) in a shared `ReferenceBank` and then
does ordinary self-attention.

In the denoising UNet (a `UNetMotionModel`, or a plain `UNet2DConditionModel` in training stage
1) a `ReferenceReader` on the matching `attn1` takes queries from the frame's own tokens and
keys/values from `concat([own tokens, reference tokens])`, with the denoising UNet's own
projections. Layers are matched by their module name (`down_blocks.0.attentions.0...attn1`),
which both UNets share, i.e. by position. Only the spatial transformers' `attn1` get new
processors: cross-attention (`attn2`) and the motion modules keep diffusers' own.

The reference tokens are the same for every frame, step and window of a clip, so each reader
projects them to keys/values once and caches the result until the bank is written again or
cleared. Rule for callers: write the bank (run the ReferenceNet) or `bank.clear()` whenever the
weights change, e.g. every training micro-step.

Install with `install_reference_attention(reference_unet, denoising_unet) -> ReferenceBank`,
undo with `remove_reference_attention(reference_unet, denoising_unet)`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn
from torch.nn import functional as F


def spatial_attention_names(unet: nn.Module, attention: str) -> list[str]:
    """Module names of the spatial transformers' `attention` layers ("attn1" or "attn2"):
    `...attentions.N...attn1`. Motion modules (`...motion_modules...`) are excluded."""
    names = []
    for name in unet.attn_processors:
        layer = name.removesuffix(".processor")
        if ".attentions." in f".{layer}" and layer.endswith(f".{attention}"):
            names.append(layer)
    return names


def spatial_self_attention_names(unet: nn.Module) -> list[str]:
    """The spatial self-attention layers: 16 for an SD 1.5 UNet, down_blocks 0-2 (2 each),
    mid_block (1), up_blocks 1-3 (3 each)."""
    return spatial_attention_names(unet, "attn1")


class ReferenceBank:
    """The reference tokens of one clip, shared by the writers and the readers.

    Attributes:
        tokens: layer name -> (B_ref, N_ref, C) tokens written by the ReferenceNet.
        version: bumped by every write and clear; readers drop their cached keys/values
            when it changes.
        reading: when False, readers do plain self-attention (the unconditional branch).
        reading_samples: optional sequence of bools (a tuple, list or bool tensor; a tuple
            on the host needs no device sync), one per video sample of the denoising batch
            (the UNet's rows go sample by sample, frames within): only samples marked True
            attend to the reference. Lets the unconditional (False) and the
            conditional (True) halves of a classifier-free-guidance batch run in one UNet call.
            None means every sample reads.
    Reference row for denoising sample s is `s % B_ref`: one reference serves every sample
    when B_ref is 1, a batch of references serves a batch of samples (repeated for CFG halves).
    """

    def __init__(self) -> None:
        self.tokens: dict[str, torch.Tensor] = {}
        self.version = 0
        self.reading = True
        self.reading_samples: Sequence[bool] | torch.Tensor | None = None

    def write(self, layer: str, tokens: torch.Tensor) -> None:
        self.tokens[layer] = tokens
        self.version += 1

    def clear(self) -> None:
        """Forget the reference (and, through `version`, every reader's cached keys/values)."""
        self.tokens = {}
        self.version += 1
        self.reading_samples = None

    @contextmanager
    def reading_disabled(self) -> Iterator[None]:
        """Within the block, readers ignore the reference (plain self-attention)."""
        previous = self.reading
        self.reading = False
        try:
            yield
        finally:
            self.reading = previous


def _self_attention_inputs_ok(attn: Attention, encoder_hidden_states, attention_mask) -> None:
    if encoder_hidden_states is not None or attention_mask is not None:
        raise ValueError("reference attention replaces self-attention only (no encoder states, no mask)")
    if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_q is not None:
        raise ValueError("reference attention supports SD-style attention layers only")


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)"""
    batch, tokens, inner = tensor.shape
    return tensor.view(batch, tokens, heads, inner // heads).transpose(1, 2)


def _merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)"""
    batch, heads, tokens, dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _project_out(attn: Attention, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


class ReferenceWriter:
    """Processor for a ReferenceNet `attn1`: stores its input in the bank, then self-attends."""

    def __init__(self, bank: ReferenceBank, layer: str):
        self.bank = bank
        self.layer = layer
        self._plain = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.bank.write(self.layer, hidden_states)
        return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceReader:
    """Processor for a denoising-UNet `attn1`: attends over [own tokens, reference tokens].

    Keys and values of the reference tokens are projected once per bank version and cached
    (`(B_ref, heads, N_ref, d)`); own-token keys/values are computed per call.
    """

    def __init__(self, bank: ReferenceBank, layer: str):
        self.bank = bank
        self.layer = layer
        self._plain = AttnProcessor2_0()
        self._cache_version = -1
        self._cached_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def reference_key_value(self, attn: Attention) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (key, value) of this layer's reference tokens, each (B_ref, heads, N_ref, d)."""
        if self._cached_kv is None or self._cache_version != self.bank.version:
            tokens = self.bank.tokens.get(self.layer)
            if tokens is None:
                raise RuntimeError(
                    f"reference bank has no tokens for {self.layer}: run the ReferenceNet on the "
                    "reference latent first, or disable reading for this call"
                )
            tokens = tokens.to(attn.to_k.weight.dtype)
            self._cached_kv = (_heads(attn.to_k(tokens), attn.heads), _heads(attn.to_v(tokens), attn.heads))
            self._cache_version = self.bank.version
        return self._cached_kv

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.bank.reading:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        _self_attention_inputs_ok(attn, encoder_hidden_states, attention_mask)
        ref_key, ref_value = self.reference_key_value(attn)

        rows = hidden_states.shape[0]
        references = ref_key.shape[0]
        samples = self.bank.reading_samples
        if samples is None:
            samples = (True,) * references
        if rows % len(samples) != 0 or len(samples) % references != 0:
            raise ValueError(
                f"{rows} attention rows cannot be split into {len(samples)} samples over {references} references"
            )
        frames = rows // len(samples)

        query = _heads(attn.to_q(hidden_states), attn.heads)
        key = _heads(attn.to_k(hidden_states), attn.heads)
        value = _heads(attn.to_v(hidden_states), attn.heads)
        # Consecutive samples that read (or do not) form one block of rows: slices, no copies.
        parts = []
        for first, stop, reads in _runs(samples):
            block = slice(first * frames, stop * frames)
            block_key, block_value = key[block], value[block]
            if reads:
                if references == 1:
                    extra_key = ref_key.expand(block_key.shape[0], -1, -1, -1)
                    extra_value = ref_value.expand(block_key.shape[0], -1, -1, -1)
                else:
                    sample_ids = torch.arange(first, stop, device=ref_key.device) % references
                    extra_key = ref_key[sample_ids].repeat_interleave(frames, dim=0)
                    extra_value = ref_value[sample_ids].repeat_interleave(frames, dim=0)
                block_key = torch.cat([block_key, extra_key], dim=2)
                block_value = torch.cat([block_value, extra_value], dim=2)
            parts.append(F.scaled_dot_product_attention(query[block], block_key, block_value))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return _project_out(attn, _merge_heads(out).to(query.dtype), hidden_states)


def _runs(flags) -> list[tuple[int, int, bool]]:
    """(first, stop, flag) for each run of equal consecutive flags."""
    runs: list[tuple[int, int, bool]] = []
    for index, flag in enumerate(bool(f) for f in flags):
        if runs and runs[-1][2] == flag:
            runs[-1] = (runs[-1][0], index + 1, flag)
        else:
            runs.append((index, index + 1, flag))
    return runs


def replace_processors(unet: nn.Module, layers: list[str], make) -> None:
    """Give each of `layers` the processor `make(layer)`; the other layers keep theirs."""
    processors = dict(unet.attn_processors)
    for layer in layers:
        processors[f"{layer}.processor"] = make(layer)
    unet.set_attn_processor(processors)


def install_reference_attention(
    reference_unet: nn.Module, denoising_unet: nn.Module, bank: ReferenceBank | None = None
) -> ReferenceBank:
    """Writers on the ReferenceNet's spatial attn1 layers, readers on the denoising UNet's.

    Both UNets must have the same spatial transformer layout (the same SD config). Returns the
    bank that connects them. Other processors (attn2, motion modules) are left as they are.
    """
    bank = bank if bank is not None else ReferenceBank()
    writer_layers = spatial_self_attention_names(reference_unet)
    reader_layers = spatial_self_attention_names(denoising_unet)
    if sorted(writer_layers) != sorted(reader_layers):
        only_ref = sorted(set(writer_layers) - set(reader_layers))
        only_den = sorted(set(reader_layers) - set(writer_layers))
        raise ValueError(
            "ReferenceNet and denoising UNet have different spatial attention layers "
            f"(only in ReferenceNet: {only_ref}; only in denoising UNet: {only_den}); "
            "both must be built from the same UNet config"
        )
    replace_processors(reference_unet, writer_layers, lambda layer: ReferenceWriter(bank, layer))
    replace_processors(denoising_unet, reader_layers, lambda layer: ReferenceReader(bank, layer))
    return bank


def remove_reference_attention(reference_unet: nn.Module, denoising_unet: nn.Module) -> None:
    """Put diffusers' default SDPA processor back on the layers that had writers/readers."""
    for unet in (reference_unet, denoising_unet):
        replace_processors(unet, spatial_self_attention_names(unet), lambda layer: AttnProcessor2_0())
