"""What the pipeline benchmarks share: their command-line options, the model, synthetic inputs.

Used by profile_pipeline.py and speed_settings_ab.py (run as scripts from this folder, which
is then on the import path).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and the size of one call; CFG and threads."""
    from pose_bridge.settings import default_of

    parser.add_argument("--model", default="tiny", help="a pipeline folder, or tiny / sd15 (random weights)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=default_of("guidance_scale"))
    parser.add_argument("--threads", type=int, default=None)


def load_pipeline(model: str, precision: str = "fp32", speed: list[str] | tuple[str, ...] = ()):
    """A random model (tiny, sd15) or a pipeline folder, in `precision`, with speed settings on."""
    from animate_backend.pipeline import AnimateAnyonePipeline
    from animate_backend.tiny import make_random_pipeline

    dtype = DTYPES[precision]
    if model in ("tiny", "sd15"):
        pipe = make_random_pipeline(model).to(dtype=dtype)
    else:
        pipe = AnimateAnyonePipeline.from_pretrained(model, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.enable_speed(*speed)


def moving_bar(width: int, height: int, frames: int) -> list[np.ndarray]:
    """Skeleton stand-ins: a bar moving across black frames."""
    skeletons = np.zeros((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        x = (i * 7) % max(1, width - 8)
        skeletons[i, height // 5 : 4 * height // 5, x : x + 8] = (255, 85, 0)
    return list(skeletons)
