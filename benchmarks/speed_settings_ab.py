"""Speed settings against the plain pipeline, alternated in one process: time and output difference.

    python benchmarks/speed_settings_ab.py --model /path/to/pipeline --setting channels_last
    python benchmarks/speed_settings_ab.py --model tiny --width 64 --height 64 --frames 8 --setting channels_last
    python benchmarks/speed_settings_ab.py --model DIR --precision bf16      # bf16 weights against fp32

Loads the pipeline twice, turns the setting on (or the precision) in the second copy, and
times calls A, B, A, B, ... (`--rounds`), so that a machine whose load changes slows both
alike. Prints each call's process CPU and wall seconds, the medians and their ratio, and the
largest difference of the decoded videos (values in [0, 1]) and the relative L2 difference
of the final latents, B against A.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from pipeline_inputs import add_pipeline_arguments, load_pipeline, moving_bar


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setting", action="append", default=[], help="speed setting of B (repeatable)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="precision of B")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipes = {"A": load_pipeline(args.model), "B": load_pipeline(args.model, args.precision, args.setting)}

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    skeletons = np.stack(moving_bar(args.width, args.height, args.frames))
    latents = torch.randn((1, 4, args.frames, args.height // 8, args.width // 8), generator=torch.Generator().manual_seed(0))
    kwargs = dict(height=args.height, width=args.width, guidance_scale=args.guidance, latents=latents,
                  context_frames=min(24, args.frames), context_overlap=0 if args.frames <= 24 else 4)

    times: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    outputs = {}
    for name, pipe in pipes.items():  # warm-up, and the outputs to compare
        outputs[name] = (pipe(reference, list(skeletons), num_inference_steps=args.steps, output_type="latent", **kwargs).frames,
                         pipe(reference, list(skeletons), num_inference_steps=args.steps, output_type="np", **kwargs).frames)
    for round_ in range(args.rounds):
        for name, pipe in pipes.items():
            cpu, wall = time.process_time(), time.perf_counter()
            pipe(reference, list(skeletons), num_inference_steps=args.steps, output_type=None, **kwargs)
            times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
            print(f"  round {round_ + 1} {name}: {times[name][-1][0]:7.2f} s CPU {times[name][-1][1]:7.2f} s wall", flush=True)

    label_b = ", ".join(args.setting + ([args.precision] if args.precision != "fp32" else [])) or "plain"
    print(f"{args.model}: {args.width}x{args.height}, {args.frames} frames, {args.steps} steps, CFG {args.guidance}, "
          f"{torch.get_num_threads()} threads; A: plain fp32, B: {label_b}")
    medians = {name: (statistics.median(c for c, _ in t), statistics.median(w for _, w in t)) for name, t in times.items()}
    for name, (cpu, wall) in medians.items():
        print(f"  {name}: median {cpu:7.2f} s CPU {wall:7.2f} s wall")
    print(f"  A/B: {medians['A'][0] / medians['B'][0]:.2f}x CPU, {medians['A'][1] / medians['B'][1]:.2f}x wall")
    (lat_a, video_a), (lat_b, video_b) = outputs["A"], outputs["B"]
    rel = (lat_b.float() - lat_a).norm() / lat_a.norm()
    print(f"  B against A: final latents {rel.item():.2e} relative L2, video {np.abs(video_b - video_a).max():.2e} max")
    return 0


if __name__ == "__main__":
    sys.exit(main())
