"""The one generation path `run` (a job folder) and `generate` (a video file) share.

Two steps, so that a job can save the latents in between: `denoise` runs the sampler and
returns the final latents, `decoded_frames` decodes any subset of their frames, chunk by
chunk, as the caller pulls them (into frame files, or straight into a video encoder).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from animate_backend.errors import CancelledError
from animate_backend.events import ProgressTracker
from pose_bridge.settings import JobSettings

DEFAULTS = JobSettings()  # the generation settings' defaults, declared in pose_bridge.settings


def denoise(
    pipe,
    reference_image,
    poses,
    *,
    width: int,
    height: int,
    num_frames: int,
    steps: int,
    guidance_scale: float,
    seed: int,
    context_frames: int,
    context_overlap: int,
    context_schedule: str = DEFAULTS.context_schedule,
    draw_hands: bool = DEFAULTS.draw_hands,
    draw_face: bool = DEFAULTS.draw_face,
    tracker: ProgressTracker,
    should_cancel: Callable[[], bool] | None = None,
):
    """Run the sampler and return the final latents (batch, 4, frames, height/8, width/8).

    Decoding is left to `decoded_frames`, so that the latents can be saved in between. A
    window longer than the video is shortened to it. The noise comes from a CPU generator:
    the same seed gives the same start on every device.
    """
    import torch

    window = max(1, min(context_frames, num_frames))
    overlap = max(0, min(context_overlap, window - 1))
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    output = pipe(
        reference_image=reference_image,
        poses=poses,
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        context_frames=window,
        context_overlap=overlap,
        context_schedule=context_schedule,
        output_type="latent",
        on_progress=tracker.on_pipeline_progress,
        should_cancel=should_cancel,
        draw_hands=draw_hands,
        draw_face=draw_face,
    )
    return output.frames


def contiguous_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs [start, stop) of sorted indices, e.g. [0, 1, 2, 5] -> [(0, 3), (5, 6)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def decoded_frames(
    pipe,
    latents,
    indices: Sequence[int],
    *,
    should_cancel: Callable[[], bool] | None = None,
    chunk_size: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, uint8 (H, W, 3) frame) for the frames `indices` of `latents`, in index order.

    The VAE decodes frames independently, so any subset can be decoded. Frames are decoded
    `chunk_size` at a time (default: the pipeline's for its device) when the caller asks for
    the next one, so memory holds one chunk however long the video. should_cancel is checked
    before each chunk: the frames handed out so far stay finished.
    """
    from animate_backend.pipeline import default_decode_chunk_size

    chunk_size = chunk_size or default_decode_chunk_size(pipe.vae.device)
    to_decode = sorted(indices)
    handed_out = 0
    for start, stop in contiguous_runs(to_decode):
        for first in range(start, stop, chunk_size):
            if should_cancel is not None and should_cancel():
                raise CancelledError(f"cancelled while decoding, after {handed_out} of {len(to_decode)} frames")
            last = min(first + chunk_size, stop)
            chunks: list[np.ndarray] = []
            pipe.decode_video(
                latents[:, :, first:last], on_frames=lambda _, frames: chunks.append(frames),
                chunk_size=last - first, output_type=None,
            )
            for k, frame in enumerate(np.concatenate(chunks)):
                yield first + k, frame
                handed_out += 1
