"""Model configs (JSON files here) and the functions that build our models from them.

`tiny.json`: the tiny random pipeline of tests and demos. `sd15.json`: Stable Diffusion 1.5
sizes, the architecture of the released weights (benchmarks, conversion defaults).
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_DIR = Path(__file__).parent
SIZES = ("tiny", "sd15")

# Motion modules of the released weights (docs/model.md, "Motion modules"): AnimateDiff-v2 style,
# one transformer layer, 8 heads, positional encoding of 32 frames, a mid-block module.
RELEASED_MOTION = {
    "motion_num_attention_heads": 8,
    "motion_max_seq_length": 32,
    "motion_transformer_layers_per_block": 1,
    "motion_norm_num_groups": 32,
    "use_motion_mid_block": True,
}


def load_size_config(size: str) -> dict:
    """The configs of every component for a model size ("tiny" or "sd15")."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {SIZES}")
    config = json.loads((CONFIG_DIR / f"{size}.json").read_text())
    config.pop("_comment", None)
    return config


def build_denoising_unet(unet_config: dict, motion: dict):
    """A randomly initialised `UNetMotionModel`: the layout of `unet_config` plus the motion modules of `motion`.

    diffusers' `from_unet2d` derives the motion UNet's config from an SD UNet and a
    `MotionAdapter`; those two are only built on the meta device, for their configs.
    Call under `accelerate.init_empty_weights()` to get an empty model to load weights into.
    """
    from accelerate import init_empty_weights
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with init_empty_weights():
        base = UNet2DConditionModel.from_config(unet_config)
        adapter = MotionAdapter(
            block_out_channels=tuple(unet_config["block_out_channels"]),
            motion_layers_per_block=unet_config.get("layers_per_block", 2),
            **{**motion, "motion_norm_num_groups": unet_config.get("norm_num_groups", 32)},
        )
    return UNetMotionModel.from_unet2d(base, adapter, load_weights=False)
