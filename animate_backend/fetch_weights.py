"""Download the public weights with huggingface_hub, then convert them (`fetch-weights`).

What is fetched (about 10 GB the first time; huggingface_hub shows progress, resumes broken
downloads and reuses its cache, so a rerun only fetches what is missing):

* patrolli/AnimateAnyone: Moore-AnimateAnyone's four .pth files;
* stable-diffusion-v1-5/stable-diffusion-v1-5: `unet/config.json` only (the UNet layout);
* stabilityai/sd-vae-ft-mse: the VAE;
* lambdalabs/sd-image-variations-diffusers: `image_encoder/` (CLIP ViT-L/14 vision tower).

Offline mode (HF_HUB_OFFLINE=1, or `offline=True`) uses only the cache; anything not cached is
listed in one WeightsError. Otherwise the Hub is tried once, quickly, before anything else:
when it cannot be reached, the cache is used as in offline mode and what is missing is reported
at once, instead of after every file's download has timed out in turn.
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
from huggingface_hub.utils import get_session

from animate_backend.convert_moore import MOORE_FILES, convert_moore
from animate_backend.errors import WeightsError

logger = logging.getLogger(__name__)

MOORE_REPO = "patrolli/AnimateAnyone"
BASE_UNET_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
VAE_REPO = "stabilityai/sd-vae-ft-mse"
IMAGE_ENCODER_REPO = "lambdalabs/sd-image-variations-diffusers"
# How long the one reachability check may take before the Hub counts as unreachable.
HUB_CHECK_TIMEOUT_S = 10.0


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
    """Whether the environment asks for Hugging Face's offline mode (HF_HUB_OFFLINE)."""
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_unreachable_reason(timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """None when the Hub answers (any HTTP status), else why it could not be reached.

    One request through huggingface_hub's own session (its proxy and certificate settings).
    """
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - every way of not getting an answer means unreachable
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def download_all(cache_dir: str | os.PathLike | None = None, offline: bool = False) -> dict[str, Path]:
    """Fetch (or find in the cache) every file; returns each input's folder."""
    # Why only the cache is used, which decides what the error tells the user to change.
    unreachable: str | None = None
    if offline:
        why_offline = "--offline"
    elif is_offline():
        why_offline = "HF_HUB_OFFLINE"
    else:
        unreachable = hub_unreachable_reason()
        why_offline = None if unreachable is None else "unreachable"
        if unreachable is not None:
            logger.warning("the Hugging Face Hub (%s) cannot be reached (%s); using only the cache",
                           constants.ENDPOINT, unreachable)
    local_only = why_offline is not None
    folders: dict[str, Path] = {}
    missing: list[str] = []
    for part, files in files_to_fetch().items():
        for hub_file in files:
            path = _download_one(hub_file, cache_dir, local_only, missing)
            if path is not None:
                folders.setdefault(part, path.parent)
    if missing:
        listing = "\n  - " + "\n  - ".join(missing)
        if why_offline is None:
            raise WeightsError(
                f"could not get these files from the Hugging Face Hub:{listing}\nCheck your connection "
                f"(and `huggingface-cli login` if the Hub asks for it), then run again; finished files are kept."
            )
        advice = {
            "--offline": "run again without --offline, connected to the internet, to download them",
            "HF_HUB_OFFLINE": "HF_HUB_OFFLINE is set in your environment: unset it and run again, connected "
                              "to the internet, to download them",
            "unreachable": f"the Hub ({constants.ENDPOINT}) could not be reached ({unreachable}): check the "
                           f"connection or proxy settings (HTTPS_PROXY) and run again",
        }[why_offline]
        raise WeightsError(
            f"these files are not in the Hugging Face cache{' (offline mode)' if why_offline != 'unreachable' else ''}:"
            f"{listing}\n{advice}, or copy the files into the cache."
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
    from animate_backend.tiny import check_output_folder

    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)  # before downloading gigabytes
    stage = on_stage or (lambda text: logger.info(text))
    stage("downloading weights (resumes, reuses the Hugging Face cache)")
    folders = download_all(cache_dir, offline)
    return convert_moore(
        folders["moore"], folders["base_unet"], folders["vae"], folders["image_encoder"], out_dir,
        dtype=dtype, overwrite=overwrite, on_stage=stage,
    )
