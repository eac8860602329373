"""Download the public weights with huggingface_hub, then convert them (`fetch-weights`).

What is fetched (about 10 GB the first time; huggingface_hub shows progress, resumes broken
downloads and reuses its cache, so a rerun only fetches what is missing):

* patrolli/AnimateAnyone: Moore-AnimateAnyone's four .pth files;
* stable-diffusion-v1-5/stable-diffusion-v1-5: `unet/config.json` only (the UNet layout);
* stabilityai/sd-vae-ft-mse: the VAE;
* lambdalabs/sd-image-variations-diffusers: `image_encoder/` (CLIP ViT-L/14 vision tower).

Offline mode (HF_HUB_OFFLINE=1, or `offline=True`) uses only the cache; anything not cached is
listed in one WeightsError.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from animate_backend.convert_moore import MOORE_FILES, convert_moore
from animate_backend.errors import WeightsError

logger = logging.getLogger(__name__)

MOORE_REPO = "patrolli/AnimateAnyone"
BASE_UNET_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
VAE_REPO = "stabilityai/sd-vae-ft-mse"
IMAGE_ENCODER_REPO = "lambdalabs/sd-image-variations-diffusers"


@dataclass(frozen=True)
class HubFile:
    """One file to fetch. `alternatives`: other names tried, in order, when the first does not exist."""

    repo_id: str
    filename: str
    alternatives: tuple[str, ...] = ()


def files_to_fetch() -> dict[str, list[HubFile]]:
    """The files of each input of `convert_moore`, by input name."""
    return {
        "moore": [HubFile(MOORE_REPO, name) for name in MOORE_FILES.values()],
        "base_unet": [HubFile(BASE_UNET_REPO, "unet/config.json")],
        "vae": [
            HubFile(VAE_REPO, "config.json"),
            HubFile(VAE_REPO, "diffusion_pytorch_model.safetensors", ("diffusion_pytorch_model.bin",)),
        ],
        "image_encoder": [
            HubFile(IMAGE_ENCODER_REPO, "image_encoder/config.json"),
            HubFile(IMAGE_ENCODER_REPO, "image_encoder/model.safetensors", ("image_encoder/pytorch_model.bin",)),
        ],
    }


def is_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def download_all(cache_dir: str | os.PathLike | None = None, offline: bool = False) -> dict[str, Path]:
    """Fetch (or find in the cache) every file; returns each input's folder."""
    offline = offline or is_offline()
    folders: dict[str, Path] = {}
    missing: list[str] = []
    for part, files in files_to_fetch().items():
        for hub_file in files:
            path = _download_one(hub_file, cache_dir, offline, missing)
            if path is not None:
                folders.setdefault(part, path.parent)
    if missing:
        where = "the Hugging Face cache (offline mode)" if offline else "the Hugging Face Hub"
        raise WeightsError(
            f"could not get these files from {where}:\n  - " + "\n  - ".join(missing)
            + ("\nConnect to the internet and unset HF_HUB_OFFLINE, or copy the files into the cache."
               if offline else "\nCheck your connection (and `huggingface-cli login` if the Hub asks for it), then run again; finished files are kept.")
        )
    return folders


def _download_one(hub_file: HubFile, cache_dir, offline: bool, missing: list[str]) -> Path | None:
    names = (hub_file.filename, *hub_file.alternatives)
    last_error: Exception | None = None
    for name in names:
        try:
            return Path(
                hf_hub_download(hub_file.repo_id, name, cache_dir=cache_dir, local_files_only=offline)
            )
        except (EntryNotFoundError, LocalEntryNotFoundError) as exc:
            last_error = exc
        except OSError as exc:  # network errors, disk full: reported with the file
            last_error = exc
            break
    missing.append(f"{hub_file.repo_id}: {' or '.join(names)} ({type(last_error).__name__})")
    return None


def fetch_weights(
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    offline: bool = False,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> Path:
    """Download what is missing, then convert it into our pipeline folder at `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise WeightsError(f"{out_dir} already exists and is not empty; choose another folder or pass --force")
    stage = on_stage or (lambda text: logger.info(text))
    stage("downloading weights (resumes, reuses the Hugging Face cache)")
    folders = download_all(cache_dir, offline)
    return convert_moore(
        folders["moore"], folders["base_unet"], folders["vae"], folders["image_encoder"], out_dir,
        dtype=dtype, overwrite=overwrite, on_stage=stage,
    )
