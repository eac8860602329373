"""Seconds per training step of both stages on the tiny model (CPU by default).

    python benchmarks/bench_train.py [--steps 10] [--threads 1] [--size 64] [--frames 4] [--device cpu]

Builds a small synthetic clip set, the tiny models of each stage, and times full
optimizer steps (data loading excluded: one batch is reused) after two warm-up steps.
Prints one line per stage with the median and the mean.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "training"))

from training_clips import make_clip, write_json_manifest  # noqa: E402  (the tests' synthetic clips)

from animate_backend.train.config import load_config  # noqa: E402
from animate_backend.train.data import AnimateAnyoneDataset  # noqa: E402
from animate_backend.train.modules import AnimateAnyoneTrainingModule  # noqa: E402
from animate_backend.train.loop import micro_step_generator  # noqa: E402
from animate_backend.train.models import build_stage_models, set_trainable  # noqa: E402
from animate_backend.train.trainer import training_loss  # noqa: E402


def bench_stage(stage: int, manifest: Path, args) -> list[float]:
    overrides = {"data.manifest": str(manifest), "data.width": args.size, "data.height": args.size,
                 "data.clip_frames": args.frames, "data.clip_stride": 1,
                 "optim.gradient_checkpointing": args.checkpointing}
    config = load_config(ROOT / "animate_backend" / "configs" / f"train_tiny_stage{stage}.yaml", overrides)
    device = torch.device(args.device)
    models = build_stage_models(config)
    params = set_trainable(models, stage)
    if args.checkpointing:
        models.denoising_unet.enable_gradient_checkpointing()
        if stage == 1:
            models.reference_unet.enable_gradient_checkpointing()
    module = AnimateAnyoneTrainingModule(models.reference_unet, models.denoising_unet, models.pose_guider).to(device)
    models.vae.to(device)
    models.image_encoder.to(device)
    d = config.data
    dataset = AnimateAnyoneDataset(manifest, stage=stage, width=d.width, height=d.height, crop="random",
                                   min_reference_distance=0 if stage == 2 else 2, clip_frames=d.clip_frames,
                                   clip_stride=1, clip_processor=models.feature_extractor)
    batch_size = config.optim.train_batch_size
    batch = default_collate([dataset[i % len(dataset)] for i in range(batch_size)])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for step in range(args.steps + 2):
        start = time.perf_counter()
        loss = training_loss(batch, module, models, config, micro_step_generator(0, 0, step), torch.float32)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.bank.clear()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return times, batch_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="training width and height")
    parser.add_argument("--frames", type=int, default=4, help="stage 2 clip length")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_json_manifest(root / "m.json", [make_clip(root / f"c{i}", frames=12) for i in range(2)])
        for stage in (1, 2):
            times, batch = bench_stage(stage, manifest, args)
            shape = f"batch {batch} x {args.size}px" + (f" x {args.frames} frames" if stage == 2 else "")
            print(f"stage {stage} tiny ({shape}, {args.device}, {args.threads} thread(s)"
                  f"{', checkpointing' if args.checkpointing else ''}): "
                  f"median {statistics.median(times):.3f} s/step, mean {statistics.mean(times):.3f} s/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
