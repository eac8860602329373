"""The single-token cross-attention shortcut against diffusers' general processor, alternated.

    python benchmarks/cross_attention_ab.py --model sd15 --width 256 --height 256 --frames 8 --steps 1 --speed channels_last
    python benchmarks/cross_attention_ab.py --model tiny --width 64 --height 64 --frames 8

One pipeline, whose spatial `attn2` processors are switched between `SingleTokenCrossAttention`
(what the pipeline installs: "short") and diffusers' `AttnProcessor2_0` ("general") before each
call; calls alternate general, short, general, short... (`--rounds`). Prints each call's
process CPU and wall seconds, the medians, their ratio, and the largest difference between
the two final latents.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from pipeline_inputs import add_pipeline_arguments, load_pipeline, moving_bar

from animate_backend.models.context_attention import SingleTokenCrossAttention, spatial_cross_attention_names
from animate_backend.models.reference_attention import replace_processors


def use_processor(pipe, make) -> None:
    for unet in (pipe.reference_unet, pipe.denoising_unet):
        replace_processors(unet, spatial_cross_attention_names(unet), lambda layer: make())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed", action="append", default=[], help="speed setting of both (repeatable)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, "fp32", args.speed)

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    skeletons = moving_bar(args.width, args.height, args.frames)
    latents = torch.randn((1, 4, args.frames, args.height // 8, args.width // 8), generator=torch.Generator().manual_seed(0))
    kwargs = dict(height=args.height, width=args.width, guidance_scale=args.guidance, latents=latents,
                  num_inference_steps=args.steps, output_type="latent",
                  context_frames=min(24, args.frames), context_overlap=0 if args.frames <= 24 else 4)
    processors = {"general": AttnProcessor2_0, "short": SingleTokenCrossAttention}

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in processors}
    outputs = {}
    for round_ in range(args.rounds):
        for name, make in processors.items():
            use_processor(pipe, make)
            cpu, wall = time.process_time(), time.perf_counter()
            outputs[name] = pipe(reference, skeletons, **kwargs).frames
            times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
            print(f"  round {round_ + 1} {name:7}: {times[name][-1][0]:7.2f} s CPU {times[name][-1][1]:7.2f} s wall", flush=True)

    cpu = {name: statistics.median(t[0] for t in runs) for name, runs in times.items()}
    wall = {name: statistics.median(t[1] for t in runs) for name, runs in times.items()}
    print(f"{args.model} {args.width}x{args.height}, {args.frames} frames, {args.steps} steps, CFG {args.guidance}, "
          f"speed {', '.join(args.speed) or 'plain'}; medians of {args.rounds}")
    print(f"  general: {cpu['general']:.2f} s CPU {wall['general']:.2f} s wall")
    print(f"  short:   {cpu['short']:.2f} s CPU {wall['short']:.2f} s wall")
    print(f"  general / short: {cpu['general'] / cpu['short']:.3f}x CPU, {wall['general'] / wall['short']:.3f}x wall")
    difference = (outputs["short"] - outputs["general"]).abs().max().item()
    print(f"  final latents, largest difference: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
