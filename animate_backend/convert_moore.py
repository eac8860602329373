"""Convert Moore-AnimateAnyone's released weights into our pipeline folder.

The release's files and key names are described in docs/model.md, "Checkpoints and conversion".

Inputs: the four pickled state dicts (`denoising_unet.pth`, `reference_unet.pth`,
`pose_guider.pth`, `motion_module.pth`), an SD 1.5 `unet` folder (only its config.json is
used), the `sd-vae-ft-mse` folder and the `sd-image-variations` `image_encoder` folder.

Strict: pickles load with `weights_only=True`; every tensor of every file is placed into a
model or reported; every weight a model expects must come from a file; shapes must match.
All problems are collected and raised as one `WeightsError`. The folder is written to a
temporary folder beside `out` and moved into place only when complete.

Naming: the UNet and Pose Guider files already use diffusers' names. Motion modules map as
    X.motion_modules.j.temporal_transformer.REST -> X.motion_modules.j.REST
    transformer_blocks.0.attention_blocks.{0,1}. -> transformer_blocks.0.attn{1,2}.
    transformer_blocks.0.norms.{0,1}.             -> transformer_blocks.0.norm{1,2}.
    transformer_blocks.0.ff_norm.                 -> transformer_blocks.0.norm3.
and `attention_blocks.k.pos_encoder.pe` (a fixed sinusoid table) is not loaded but checked:
at most `motion_max_seq_length` long and equal to diffusers' own table.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from animate_backend.errors import WeightsError

logger = logging.getLogger(__name__)

MOORE_FILES = {
    "denoising_unet": "denoising_unet.pth",
    "reference_unet": "reference_unet.pth",
    "pose_guider": "pose_guider.pth",
    "motion_module": "motion_module.pth",
}
# The ReferenceNet's output layers are never used (only its attention inputs are), so Moore
# does not save them; we fill them with an identity norm and a zero conv to complete the model.
REFERENCE_UNUSED_PREFIXES = ("conv_norm_out.", "conv_out.")

_MOTION_KEY = re.compile(
    r"^(?P<block>(?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(?P<index>\d+)"
    r"\.temporal_transformer\.(?P<rest>.+)$"
)
_ATTENTION = re.compile(r"^transformer_blocks\.(?P<layer>\d+)\.attention_blocks\.(?P<k>[01])\.(?P<rest>.+)$")
_NORMS = re.compile(r"^transformer_blocks\.(?P<layer>\d+)\.norms\.(?P<k>[01])\.(?P<rest>.+)$")
_FF_NORM = re.compile(r"^transformer_blocks\.(?P<layer>\d+)\.ff_norm\.(?P<rest>.+)$")
_POSITIONAL = "pos_encoder.pe"


def moore_motion_key(key: str) -> tuple[str, bool]:
    """Our name for a Moore motion-module key, and whether it is a positional table (not loaded).

    Raises KeyError for a key that is not a motion-module key.
    """
    match = _MOTION_KEY.match(key)
    if match is None:
        raise KeyError(key)
    prefix = f"{match['block']}.motion_modules.{match['index']}."
    rest = match["rest"]
    if (attention := _ATTENTION.match(rest)) is not None:
        inner = attention["rest"]
        if inner == _POSITIONAL:
            return f"{prefix}transformer_blocks.{attention['layer']}.pos_embed.pe", True
        return f"{prefix}transformer_blocks.{attention['layer']}.attn{int(attention['k']) + 1}.{inner}", False
    if (norms := _NORMS.match(rest)) is not None:
        return f"{prefix}transformer_blocks.{norms['layer']}.norm{int(norms['k']) + 1}.{norms['rest']}", False
    if (ff_norm := _FF_NORM.match(rest)) is not None:
        return f"{prefix}transformer_blocks.{ff_norm['layer']}.norm3.{ff_norm['rest']}", False
    return prefix + rest, False


def ours_to_moore_motion_key(key: str) -> str:
    """Moore's name for one of our motion-module keys (the inverse of `moore_motion_key`)."""
    match = re.match(r"^(?P<prefix>.+?\.motion_modules\.\d+)\.(?P<rest>.+)$", key)
    if match is None:
        raise KeyError(key)
    rest = match["rest"]
    rest = re.sub(r"^transformer_blocks\.(\d+)\.attn([12])\.", lambda m: f"transformer_blocks.{m[1]}.attention_blocks.{int(m[2]) - 1}.", rest)
    rest = re.sub(r"^transformer_blocks\.(\d+)\.norm([12])\.", lambda m: f"transformer_blocks.{m[1]}.norms.{int(m[2]) - 1}.", rest)
    rest = re.sub(r"^transformer_blocks\.(\d+)\.norm3\.", r"transformer_blocks.\1.ff_norm.", rest)
    return f"{match['prefix']}.temporal_transformer.{rest}"


def moore_state_dicts(pipe) -> dict[str, dict[str, torch.Tensor]]:
    """The four state dicts of `pipe` written in Moore's naming, as Moore's files hold them.

    The inverse of the conversion, used by the tests and to export our weights to tools that
    read Moore's format. Positional tables are written for both attention blocks, as Moore does.
    """
    denoising = pipe.denoising_unet.state_dict()
    motion: dict[str, torch.Tensor] = {}
    spatial: dict[str, torch.Tensor] = {}
    for key, value in denoising.items():
        if ".motion_modules." not in key:
            spatial[key] = value.clone()
        elif key.endswith(".pos_embed.pe"):
            # X.motion_modules.j.transformer_blocks.L.pos_embed.pe -> one table per attention block
            head, layer = key.removesuffix(".pos_embed.pe").rsplit(".transformer_blocks.", 1)
            for k in (0, 1):
                moore_key = f"{head}.temporal_transformer.transformer_blocks.{layer}.attention_blocks.{k}.{_POSITIONAL}"
                motion[moore_key] = value.clone()
        else:
            motion[ours_to_moore_motion_key(key)] = value.clone()
    reference = {
        key: value.clone()
        for key, value in pipe.reference_unet.state_dict().items()
        if not key.startswith(REFERENCE_UNUSED_PREFIXES)
    }
    return {
        MOORE_FILES["denoising_unet"]: spatial,
        MOORE_FILES["reference_unet"]: reference,
        MOORE_FILES["pose_guider"]: {k: v.clone() for k, v in pipe.pose_guider.state_dict().items()},
        MOORE_FILES["motion_module"]: motion,
    }


@dataclass
class Problems:
    """Everything wrong with the inputs, reported together."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)

    def add_keys(self, what: str, keys: list[str], limit: int = 8) -> None:
        if keys:
            keys = sorted(keys)
            shown = ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
            self.add(f"{what} ({len(keys)}): {shown}")

    def raise_if_any(self, context: str) -> None:
        if self.items:
            raise WeightsError(f"{context}:\n  - " + "\n  - ".join(self.items))


def load_pickle(path: Path, problems: Problems) -> dict[str, torch.Tensor] | None:
    """A state dict from a .pth, safely (weights_only); None with a problem recorded on failure."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # old (non-zip) pickles cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
        problems.add(f"{path.name}: cannot be read as a weights-only PyTorch state dict ({exc})")
        return None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        problems.add(f"{path.name}: is not a state dict (a mapping of names to tensors)")
        return None
    return data


def place(
    file_name: str,
    provided: dict[str, torch.Tensor],
    expected: dict[str, torch.Size],
    problems: Problems,
) -> dict[str, torch.Tensor]:
    """The provided tensors that fill `expected`; missing, extra and wrongly shaped keys reported."""
    missing = [key for key in expected if key not in provided]
    extra = [key for key in provided if key not in expected]
    wrong = [
        f"{key} {tuple(provided[key].shape)} (expected {tuple(expected[key])})"
        for key in expected
        if key in provided and provided[key].shape != expected[key]
    ]
    problems.add_keys(f"{file_name}: missing weights", missing)
    problems.add_keys(f"{file_name}: unexpected weights", extra)
    problems.add_keys(f"{file_name}: wrong shapes", wrong)
    return {key: provided[key] for key in expected if key in provided}


def check_inputs(moore_dir: Path, base_unet_dir: Path, vae_dir: Path, image_encoder_dir: Path) -> None:
    problems = Problems()
    for name in MOORE_FILES.values():
        if not (moore_dir / name).is_file():
            problems.add(f"{moore_dir / name} is missing (Moore-AnimateAnyone weights, Hugging Face patrolli/AnimateAnyone)")
    if not (base_unet_dir / "config.json").is_file():
        problems.add(f"{base_unet_dir / 'config.json'} is missing (the SD 1.5 unet folder's config)")
    for folder, what in ((vae_dir, "sd-vae-ft-mse VAE"), (image_encoder_dir, "sd-image-variations image_encoder")):
        if not (folder / "config.json").is_file():
            problems.add(f"{folder / 'config.json'} is missing (the {what} folder)")
    problems.raise_if_any("cannot convert: inputs are missing")


def _load_pretrained(cls, folder: Path, what: str, problems: Problems, dtype: torch.dtype | None):
    try:
        # No dtype: the folder's own precision, as for Moore's files (transformers calls that "auto";
        # diffusers keeps a checkpoint's float32 when given none).
        keep = "auto" if cls.__module__.startswith("transformers") else None
        model, info = cls.from_pretrained(folder, output_loading_info=True, dtype=dtype or keep)
    except Exception as exc:  # noqa: BLE001 - reported with the folder named
        problems.add(f"{what} in {folder} cannot be loaded: {exc}")
        return None
    problems.add_keys(f"{what}: missing weights", list(info.get("missing_keys", [])))
    problems.add_keys(f"{what}: unexpected weights", list(info.get("unexpected_keys", [])))
    problems.add_keys(f"{what}: wrong shapes", [str(item) for item in info.get("mismatched_keys", [])])
    return model


def convert_moore(
    moore_dir: str | os.PathLike,
    base_unet_dir: str | os.PathLike,
    vae_dir: str | os.PathLike,
    image_encoder_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    beta_schedule: str = "linear",
    pose_guider_channels: tuple[int, ...] = (16, 32, 96, 256),
    on_stage: Callable[[str], None] | None = None,
) -> Path:
    """Write our pipeline folder at `out_dir` from Moore's files and the base models. Returns `out_dir`.

    Weights keep the precision of the files they come from (Moore's are fp32), so a converted
    pipeline computes what the checkpoint does; `dtype` (e.g. torch.float16) rounds them all to
    one precision instead, which halves the folder's size.

    `pose_guider_channels` is the released Pose Guider's layout; other values are for models
    trained with another (e.g. the tiny test models).
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    from animate_backend.configs import RELEASED_MOTION, build_denoising_unet
    from animate_backend.models.pose_guider import PoseGuider
    from animate_backend.pipeline import AnimateAnyonePipeline, default_scheduler, make_clip_image_processor
    from animate_backend.tiny import save_pipeline_folder

    moore_dir, base_unet_dir = Path(moore_dir), Path(base_unet_dir)
    vae_dir, image_encoder_dir, out_dir = Path(vae_dir), Path(image_encoder_dir), Path(out_dir)
    stage = on_stage or (lambda text: logger.info(text))
    check_inputs(moore_dir, base_unet_dir, vae_dir, image_encoder_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise WeightsError(f"{out_dir} already exists and is not empty; choose another folder or pass --force")

    stage("building the model skeletons")
    unet_config = dict(UNet2DConditionModel.load_config(base_unet_dir))
    motion = {**RELEASED_MOTION, "motion_norm_num_groups": unet_config.get("norm_num_groups", 32)}
    with init_empty_weights():
        reference_unet = UNet2DConditionModel.from_config(unet_config)
        denoising_unet = build_denoising_unet(unet_config, motion)
        pose_guider = PoseGuider(
            conditioning_embedding_channels=unet_config["block_out_channels"][0],
            block_out_channels=tuple(pose_guider_channels),
        )

    problems = Problems()
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for part, name in MOORE_FILES.items():
        stage(f"reading {name}")
        state = load_pickle(moore_dir / name, problems)
        if state is not None:
            loaded[part] = state

    # ReferenceNet: everything but its unused output layers.
    reference_state: dict[str, torch.Tensor] = {}
    if "reference_unet" in loaded:
        provided = loaded.pop("reference_unet")
        expected = {k: v.shape for k, v in reference_unet.state_dict().items()}
        # Filled when absent (Moore's file has none), used when present.
        for key, shape in expected.items():
            if key.startswith(REFERENCE_UNUSED_PREFIXES) and key not in provided:
                filler = torch.ones if key == "conv_norm_out.weight" else torch.zeros
                provided[key] = filler(shape)
        reference_state = place(MOORE_FILES["reference_unet"], provided, expected, problems)

    # Denoising UNet: spatial layers from denoising_unet.pth, motion modules from motion_module.pth.
    denoising_expected = {k: v for k, v in denoising_unet.state_dict().items()}
    denoising_state: dict[str, torch.Tensor] = {}
    if "denoising_unet" in loaded:
        spatial = {k: v.shape for k, v in denoising_expected.items() if ".motion_modules." not in k}
        denoising_state.update(place(MOORE_FILES["denoising_unet"], loaded.pop("denoising_unet"), spatial, problems))
    if "motion_module" in loaded:
        denoising_state.update(_place_motion(loaded.pop("motion_module"), denoising_expected, problems))

    pose_state: dict[str, torch.Tensor] = {}
    if "pose_guider" in loaded:
        expected = {k: v.shape for k, v in pose_guider.state_dict().items()}
        pose_state = place(MOORE_FILES["pose_guider"], loaded.pop("pose_guider"), expected, problems)

    stage("loading the VAE and the image encoder")
    vae = _load_pretrained(AutoencoderKL, vae_dir, "VAE", problems, dtype)
    image_encoder = _load_pretrained(CLIPVisionModelWithProjection, image_encoder_dir, "image encoder", problems, dtype)
    if image_encoder is not None and image_encoder.config.projection_dim != unet_config.get("cross_attention_dim"):
        problems.add(
            f"image encoder projects to {image_encoder.config.projection_dim} but the UNet's cross-attention "
            f"takes {unet_config.get('cross_attention_dim')}: use sd-image-variations' image_encoder"
        )
    problems.raise_if_any(f"cannot convert the weights in {moore_dir}")

    stage("placing the weights")
    reference_unet.load_state_dict(_cast(reference_state, dtype), strict=True, assign=True)
    denoising_unet.load_state_dict(_cast(denoising_state, dtype), strict=True, assign=True)
    pose_guider.load_state_dict(_cast(pose_state, dtype), strict=True, assign=True)
    size = image_encoder.config.image_size
    pipe = AnimateAnyonePipeline(
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=make_clip_image_processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        reference_unet=reference_unet,
        denoising_unet=denoising_unet,
        pose_guider=pose_guider,
        scheduler=default_scheduler(beta_schedule),
    )
    stage(f"writing {out_dir}")
    return save_pipeline_folder(pipe, out_dir, overwrite=overwrite)


def _place_motion(
    provided: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], problems: Problems
) -> dict[str, torch.Tensor]:
    name = MOORE_FILES["motion_module"]
    renamed: dict[str, torch.Tensor] = {}
    not_motion: list[str] = []
    bad_tables: list[str] = []
    for key, value in provided.items():
        try:
            ours, positional = moore_motion_key(key)
        except KeyError:
            not_motion.append(key)
            continue
        if not positional:
            renamed[ours] = value
            continue
        table = expected.get(ours)
        if table is None:
            not_motion.append(key)
        elif value.ndim != 3 or value.shape[0] != 1 or value.shape[2] != table.shape[2] or value.shape[1] > table.shape[1]:
            bad_tables.append(f"{key} {tuple(value.shape)} (at most {tuple(table.shape)})")
        elif not torch.allclose(value.float(), table[:, : value.shape[1]].float(), atol=1e-4):
            bad_tables.append(f"{key} differs from the sinusoidal table the motion modules use")
    problems.add_keys(f"{name}: keys that are not motion-module weights", not_motion)
    problems.add_keys(f"{name}: positional encodings that do not fit", bad_tables)
    motion_expected = {k: v.shape for k, v in expected.items() if ".motion_modules." in k and not k.endswith(".pos_embed.pe")}
    placed = place(name, renamed, motion_expected, problems)
    # The positional tables are buffers computed by diffusers; keep its own.
    placed.update({k: v for k, v in expected.items() if k.endswith(".pos_embed.pe")})
    return placed


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
