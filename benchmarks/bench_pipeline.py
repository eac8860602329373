"""Seconds per frame and peak memory of AnimateAnyonePipeline, with random weights.

    python benchmarks/bench_pipeline.py                                  # tiny, CPU, 64x64, 8 frames
    python benchmarks/bench_pipeline.py --size sd15 --frames 24          # SD 1.5 size, 512x768, fp16 on CUDA
    python benchmarks/bench_pipeline.py --size sd15 --frames 240         # memory must stay within 10% of 24
    python benchmarks/bench_pipeline.py --size sd15 --width 64 --height 64 --frames 2 --steps 1   # CPU smoke run

Targets (issue 4, on an H100): at most 0.5 s per frame and 10 GB peak for a 24-frame window at
512x768, 20 steps, CFG 3.5, fp16; 240 frames within 10% of the 24-frame peak. Frames are streamed
(output_type=None), as the job runner does. Peak memory is the CUDA allocator's peak on a GPU,
the process's peak resident set on the CPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch

from animate_backend.loading import resolve_device, resolve_dtype
from animate_backend.tiny import make_random_pipeline

DEFAULTS = {"tiny": {"width": 64, "height": 64, "frames": 8}, "sd15": {"width": 512, "height": 768, "frames": 24}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--context-frames", type=int, default=24)
    parser.add_argument("--context-overlap", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs (default 1 on CUDA, 0 on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--pose-feature-budget-mib", type=float, default=None,
                        help="host memory for kept Pose Guider features (default: the pipeline's)")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def walking_poses(frames: int, width: int, height: int):
    """A PoseSequence (what the job runner passes): a stick figure crossing the frame.

    Poses, not images, so that the pipeline draws each skeleton when a window needs it, as it
    does in a job, and the benchmark's own input does not grow with the length.
    """
    from pose_bridge.keypoints import Pose, PoseSequence

    sequence = []
    for i in range(frames):
        pose = Pose(width, height)
        x = width * (0.2 + 0.6 * (i % 48) / 48)
        for index, (dx, dy) in {0: (0, 0.15), 1: (0, 0.25), 2: (-0.08, 0.25), 5: (0.08, 0.25), 8: (-0.05, 0.55),
                                11: (0.05, 0.55), 9: (-0.05, 0.75), 12: (0.05, 0.75)}.items():
            pose.body[index] = (x + dx * width, dy * height, 1.0)
        sequence.append(pose)
    return PoseSequence(sequence, fps=24)


def run(pipe, args, device, frames: int, steps: int) -> dict:
    reference = np.full((args.height, args.width, 3), 128, dtype=np.uint8)
    reference[args.height // 4 : 3 * args.height // 4, args.width // 3 : 2 * args.width // 3] = (200, 80, 60)
    poses = walking_poses(frames, args.width, args.height)
    windows = [0]

    def on_progress(info: dict) -> None:
        windows[0] = max(windows[0], info["windows"])

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pipe(
        reference, poses, height=args.height, width=args.width, num_inference_steps=steps,
        guidance_scale=args.guidance, generator=torch.Generator().manual_seed(0),
        context_frames=min(args.context_frames, frames) if frames < args.context_frames else args.context_frames,
        context_overlap=args.context_overlap if frames > args.context_frames else 0,
        output_type=None, on_frames=lambda first, chunk: None, on_progress=on_progress,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"seconds": total, "windows": windows[0], "peak_gib": peak}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    built = time.perf_counter()
    pipe = make_random_pipeline(args.size, seed=0, device=device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.pose_feature_budget_mib is not None:
        pipe.pose_feature_budget_bytes = int(args.pose_feature_budget_mib * 2**20)
    built = time.perf_counter() - built
    print(f"pipeline {args.size} on {device} in {dtype} built in {built:.1f} s; "
          f"{args.width}x{args.height}, {args.frames} frames, {args.steps} steps, CFG {args.guidance}, "
          f"windows of {args.context_frames} (overlap {args.context_overlap})", file=sys.stderr)
    warmup = args.warmup if args.warmup is not None else (1 if device.type == "cuda" else 0)
    for _ in range(warmup):
        run(pipe, args, device, min(args.frames, args.context_frames), 1)
    rss_before = peak_rss_mib()
    result = run(pipe, args, device, args.frames, args.steps)
    per_frame = result["seconds"] / args.frames
    print(f"size={args.size} device={device.type} dtype={str(dtype).removeprefix('torch.')} "
          f"{args.width}x{args.height} frames={args.frames} steps={args.steps}")
    print(f"  total {result['seconds']:.2f} s over {result['windows']} window(s)")
    print(f"  seconds per frame: {per_frame:.3f}")
    if result["peak_gib"] is not None:
        print(f"  peak CUDA memory: {result['peak_gib']:.2f} GiB")
    print(f"  peak process RSS: {peak_rss_mib():.0f} MiB (before the timed run: {rss_before:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
