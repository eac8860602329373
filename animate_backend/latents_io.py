"""A job's saved latents (out/latents.safetensors): the denoised result before decoding.

Saved with the job's fingerprint, so that a rerun after a crash or cancel during decoding
decodes the missing frames without denoising again, and never reuses another run's latents.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pose_bridge.files import atomic_path

logger = logging.getLogger(__name__)

LATENTS_FORMAT = "animate_backend.latents"


def save_latents(path: Path, latents, fingerprint: str) -> None:
    """Write the denoised latents with their fingerprint, atomically."""
    from safetensors.torch import save_file

    tensor = latents.detach().to("cpu", dtype=latents.dtype).contiguous()
    with atomic_path(path) as tmp:
        save_file({"latents": tensor}, str(tmp), metadata={"fingerprint": fingerprint, "format": LATENTS_FORMAT})


def load_latents(path: Path, fingerprint: str):
    """The saved latents if they exist and belong to this fingerprint, else None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("fingerprint") != fingerprint or "latents" not in f.keys():
                return None
            return f.get_tensor("latents")
    except Exception as exc:  # a torn or foreign file: regenerate rather than fail
        logger.warning("ignoring unreadable %s (%s)", path, exc)
        return None
