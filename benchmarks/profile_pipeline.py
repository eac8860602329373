"""Where a pipeline call spends its time: per part of the model, and per torch operator.

    python benchmarks/profile_pipeline.py --model /path/to/pipeline --width 256 --height 256 --frames 16 --steps 2
    python benchmarks/profile_pipeline.py --model tiny --ops            # also the operator table (torch.profiler)
    python benchmarks/profile_pipeline.py --model DIR --speed channels_last --speed temporal_attention

Parts are timed with forward hooks on the denoising UNet's motion modules, spatial
transformers, resnets and resamplers, and on the Pose Guider, ReferenceNet, CLIP and VAE
decoder; the rest of the call ("other") is the scheduler, the windows' bookkeeping and the
UNets' own small layers. Times are process CPU seconds and wall seconds of one call, after one
untimed warm-up call of one step. `--speed NAME` turns on one of the pipeline's speed settings
(`AnimateAnyonePipeline.enable_speed`), as many times as wanted.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from pipeline_inputs import add_pipeline_arguments, load_pipeline, moving_bar

# Denoising-UNet parts by module name; each pattern matches whole blocks that never nest in each other.
UNET_PARTS = {
    "motion modules": re.compile(r"\.motion_modules\.\d+$"),
    "spatial transformers": re.compile(r"\.attentions\.\d+$"),
    "resnets": re.compile(r"\.resnets\.\d+$"),
    "resamplers": re.compile(r"\.(up|down)samplers\.\d+$"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_arguments(parser)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--speed", action="append", default=[], help="a speed setting to enable (repeatable)")
    parser.add_argument("--ops", action="store_true", help="also print torch.profiler's operator table")
    return parser.parse_args(argv)


def load(args):
    return load_pipeline(args.model, args.precision, args.speed)


class PartTimer:
    """Forward pre/post hooks adding each part's CPU and wall seconds."""

    def __init__(self):
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self._start: dict[int, tuple[float, float]] = {}

    def watch(self, module: torch.nn.Module, part: str) -> None:
        def before(mod, inputs):
            self._start[id(mod)] = (time.process_time(), time.perf_counter())

        def after(mod, inputs, output):
            cpu, wall = self._start.pop(id(mod))
            self.cpu[part] += time.process_time() - cpu
            self.wall[part] += time.perf_counter() - wall

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def watch_pipeline(self, pipe) -> None:
        for name, module in pipe.denoising_unet.named_modules():
            for part, pattern in UNET_PARTS.items():
                if pattern.search(f".{name}"):
                    self.watch(module, f"UNet {part}")
        self.watch(pipe.reference_unet, "ReferenceNet")
        self.watch(pipe.pose_guider, "Pose Guider")
        self.watch(pipe.image_encoder, "CLIP")
        self.watch(pipe.vae.decoder, "VAE decode")
        self.watch(pipe.vae.encoder, "VAE encode")


def inputs(args):
    reference = np.full((args.height, args.width, 3), 128, dtype=np.uint8)
    reference[args.height // 4 : 3 * args.height // 4, args.width // 3 : 2 * args.width // 3] = (200, 80, 60)
    return reference, moving_bar(args.width, args.height, args.frames)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load(args)
    reference, skeletons = inputs(args)
    kwargs = dict(height=args.height, width=args.width, guidance_scale=args.guidance,
                  context_frames=min(24, args.frames), context_overlap=0 if args.frames <= 24 else 4,
                  generator=torch.Generator().manual_seed(0), output_type=None)
    pipe(reference, skeletons, num_inference_steps=1, **kwargs)  # warm-up, untimed

    timer = PartTimer()
    timer.watch_pipeline(pipe)
    cpu, wall = time.process_time(), time.perf_counter()
    if args.ops:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            pipe(reference, skeletons, num_inference_steps=args.steps, **kwargs)
    else:
        pipe(reference, skeletons, num_inference_steps=args.steps, **kwargs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

    print(f"{args.model}: {args.width}x{args.height}, {args.frames} frames, {args.steps} steps, CFG {args.guidance}, "
          f"{args.precision}, {torch.get_num_threads()} threads, speed settings: {', '.join(args.speed) or 'none'}")
    print(f"  {'part':<28} {'CPU s':>8} {'wall s':>8} {'share':>6}")
    for part in sorted(timer.cpu, key=timer.cpu.get, reverse=True):
        print(f"  {part:<28} {timer.cpu[part]:8.2f} {timer.wall[part]:8.2f} {timer.cpu[part] / cpu:6.1%}")
    other = cpu - sum(timer.cpu.values())
    print(f"  {'other':<28} {other:8.2f} {wall - sum(timer.wall.values()):8.2f} {other / cpu:6.1%}")
    print(f"  {'whole call':<28} {cpu:8.2f} {wall:8.2f}")
    if args.ops:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
