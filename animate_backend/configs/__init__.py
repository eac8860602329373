"""Model configs (JSON files here) and the functions that build our models from them.

`tiny.json`: the tiny random pipeline of tests. `sd15.json`: Stable Diffusion 1.5 sizes, the
architecture of the released weights (benchmarks, conversion defaults). `demo.json`: the small
model `make train-demo` trains from scratch on the demo character.

A size is one of these names or the path of a JSON file of the same form: one section per
component (unet, motion, vae, image_encoder, feature_extractor, pose_guider), each holding
the keyword arguments of that component's constructor. Their widths must agree (see
`check_size_config`): that is what makes a size a working model.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_DIR = Path(__file__).parent
SIZES = ("tiny", "sd15", "demo")
SECTIONS = ("unet", "motion", "vae", "image_encoder", "feature_extractor", "pose_guider")

# Motion modules of the released weights (docs/model.md, "Motion modules"): AnimateDiff-v2 style,
# one transformer layer, 8 heads, positional encoding of 32 frames, a mid-block module.
RELEASED_MOTION = {
    "motion_num_attention_heads": 8,
    "motion_max_seq_length": 32,
    "motion_transformer_layers_per_block": 1,
    "motion_norm_num_groups": 32,
    "use_motion_mid_block": True,
}


def load_size_config(size: str | Path) -> dict:
    """The configs of every component for a model size: a name in SIZES or a JSON file's path."""
    if str(size) in SIZES:
        path = CONFIG_DIR / f"{size}.json"
    else:
        path = Path(size).expanduser()
        if path.suffix.lower() != ".json" or not path.is_file():
            raise ValueError(f"unknown model size {str(size)!r}; choose one of {SIZES} or give a size JSON file "
                             "(see animate_backend/configs/demo.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"model size file {path} is not valid JSON: {exc}") from exc
    config.pop("_comment", None)
    check_size_config(config, str(path))
    return config


def vae_downscale(vae_config: dict) -> int:
    """Pixels per latent pixel: every VAE encoder block but the last halves the resolution."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def check_size_config(config: dict, where: str = "the size config") -> None:
    """Raise ValueError when the components of a size cannot work together, saying what to change."""
    missing = [name for name in SECTIONS if name not in config]
    unknown = sorted(set(config) - set(SECTIONS))
    if missing or unknown:
        raise ValueError(f"{where}: sections {SECTIONS} are required; missing {missing}, unknown {unknown}")
    unet, vae, guider = config["unet"], config["vae"], config["pose_guider"]
    image_encoder = config["image_encoder"]
    problems = []
    if unet.get("in_channels", 4) != vae.get("latent_channels", 4):
        problems.append(f"unet.in_channels ({unet.get('in_channels', 4)}) must equal vae.latent_channels "
                        f"({vae.get('latent_channels', 4)})")
    if unet.get("out_channels", 4) != unet.get("in_channels", 4):
        problems.append("unet.out_channels must equal unet.in_channels (the UNet predicts the latent's noise)")
    if guider["conditioning_embedding_channels"] != unet["block_out_channels"][0]:
        problems.append(f"pose_guider.conditioning_embedding_channels ({guider['conditioning_embedding_channels']}) "
                        f"must equal unet.block_out_channels[0] ({unet['block_out_channels'][0]})")
    guider_scale = 2 ** (len(guider.get("block_out_channels", (16, 32, 96, 256))) - 1)
    if guider_scale != vae_downscale(vae):
        problems.append(f"the Pose Guider downscales by {guider_scale} but the VAE by {vae_downscale(vae)}; give "
                        "pose_guider.block_out_channels and vae.block_out_channels the same number of levels")
    if image_encoder.get("projection_dim") != unet.get("cross_attention_dim"):
        problems.append(f"image_encoder.projection_dim ({image_encoder.get('projection_dim')}) must equal "
                        f"unet.cross_attention_dim ({unet.get('cross_attention_dim')})")
    if len(unet["down_block_types"]) != len(unet["block_out_channels"]) or \
            len(unet["up_block_types"]) != len(unet["block_out_channels"]):
        problems.append("unet.down_block_types, up_block_types and block_out_channels must have one entry per level")
    if len(vae["down_block_types"]) != len(vae["block_out_channels"]) or \
            len(vae["up_block_types"]) != len(vae["block_out_channels"]):
        problems.append("vae.down_block_types, up_block_types and block_out_channels must have one entry per level")
    groups = unet.get("norm_num_groups", 32)
    if any(c % groups for c in unet["block_out_channels"]):
        problems.append(f"unet.block_out_channels {unet['block_out_channels']} must be multiples of "
                        f"unet.norm_num_groups ({groups})")
    vae_groups = vae.get("norm_num_groups", 32)
    if any(c % vae_groups for c in vae["block_out_channels"]):
        problems.append(f"vae.block_out_channels {vae['block_out_channels']} must be multiples of "
                        f"vae.norm_num_groups ({vae_groups})")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


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
