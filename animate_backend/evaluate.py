"""Scores of a model on held-out takes with rendered ground truth.

    python -m animate_backend evaluate MODEL --data HELDOUT/manifest.jsonl [--out scores.json] [--floors]

HELDOUT is a manifest of frame-folder takes with keypoints, as `python -m
blender_addon.commands.dataset` writes (plain backgrounds). For each take the first frame is the
reference image and the model generates the others from their poses, at the frames' size.
Generated frames are compared with the true ones (animate_backend.metrics):

    iou            silhouette IoU of generated and true figure (figure = away from the background colour)
    iou_reversed   the same against the time-reversed truth: a model that ignores the poses
                   and draws a fixed figure scores as well here as on `iou`
    psnr, ssim     pixel agreement
    temporal_error frame-to-frame change, generated vs true (flicker and frozen frames raise it)

Rows: the model; `vae_ceiling`, the true frames through the model's own VAE (no model can
beat its VAE); and with --floors the two floors, `reference_copy` (the reference still for
every frame) and `untrained` (the model's architecture with random weights).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from animate_backend import metrics
from animate_backend.errors import InputError
from pose_bridge.cli_args import add_setting_arguments, whole
from pose_bridge.settings import JobSettings

logger = logging.getLogger(__name__)

METRICS = ("iou", "iou_reversed", "psnr", "ssim", "temporal_error")

DEFAULTS = JobSettings()


@dataclass
class Take:
    name: str
    frames: np.ndarray  # (F, H, W, 3) uint8, the rendered truth
    poses: object  # PoseSequence, one pose per frame

    @property
    def reference(self) -> np.ndarray:
        return self.frames[0]

    @property
    def targets(self) -> np.ndarray:
        return self.frames[1:]


@dataclass
class Scores:
    """Per-take scores of one row, averaged over frames."""

    takes: list[dict[str, float]] = field(default_factory=list)

    def mean(self) -> dict[str, float]:
        return {name: float(np.mean([t[name] for t in self.takes])) for name in METRICS}


def read_takes(manifest: str | Path, limit: int | None = None) -> list[Take]:
    """The held-out takes of a manifest (frame folders with keypoints, at least 2 frames each)."""
    from animate_backend.train.data import IMAGE_SUFFIXES
    from animate_backend.train.manifest import read_manifest
    from pose_bridge.image_io import read_image
    from pose_bridge.openpose_json import load_poses

    takes = []
    for entry in read_manifest(manifest)[:limit]:
        if not isinstance(entry, dict) or "frames" not in entry or "keypoints" not in entry:
            raise InputError(f"held-out entries need 'frames' (a folder) and 'keypoints'; got {str(entry)[:80]} "
                             "(render held-out takes with `python -m blender_addon.commands.dataset`)")
        paths = sorted(p for p in Path(entry["frames"]).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        poses = load_poses(entry["keypoints"])
        name = str(entry.get("name") or entry["frames"])
        if len(paths) != len(poses) or len(paths) < 2:
            raise InputError(f"take {name}: {len(paths)} frames and {len(poses)} poses; a take needs one pose per "
                             "frame and at least 2 frames (the first is the reference)")
        frames = np.stack([read_image(p) for p in paths])
        height, width = frames.shape[1:3]
        if width % 8 or height % 8:
            raise InputError(f"take {name}: frames are {width}x{height}; evaluation generates at the frames' size, "
                             "which must be a multiple of 8")
        takes.append(Take(name, frames, poses))
    if not takes:
        raise InputError(f"no takes in {manifest}")
    return takes


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) or float [0, 1] (F, H, W, 3) -> float (F, 3, H, W) in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames))
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    return tensor.float().permute(0, 3, 1, 2)


def score_frames(generated: np.ndarray, truth: np.ndarray, threshold: float = metrics.SILHOUETTE_THRESHOLD) -> dict:
    """The scores of one take's generated frames against the true ones (both (F, H, W, 3))."""
    g, t = _to_tensor(generated), _to_tensor(truth)
    if g.shape != t.shape:
        raise ValueError(f"generated frames {tuple(g.shape)} and truth {tuple(t.shape)} differ in shape")
    # The figure is found against the truth's background colour in both: a model whose
    # background drifts is penalised for it, as a viewer would see it.
    background = metrics.background_colour(t)
    mask_g = metrics.silhouette(g, threshold, background)
    mask_t = metrics.silhouette(t, threshold, background)
    return {
        "iou": float(metrics.iou(mask_g, mask_t).mean()),
        "iou_reversed": float(metrics.iou(mask_g, mask_t.flip(0)).mean()),
        "psnr": float(metrics.psnr(g, t).clamp(max=100.0).mean()),
        "ssim": float(metrics.ssim(g, t).mean()),
        "temporal_error": metrics.temporal_error(g, t),
    }


@torch.no_grad()
def vae_roundtrip(vae, frames: np.ndarray, chunk: int = 8) -> np.ndarray:
    """Frames (F, H, W, 3) uint8 through the VAE (posterior mean), float (F, H, W, 3) in [0, 1]."""
    out = []
    pixels = _to_tensor(frames) * 2.0 - 1.0
    for start in range(0, len(pixels), chunk):
        batch = pixels[start:start + chunk].to(vae.device, vae.dtype)
        decoded = vae.decode(vae.encode(batch).latent_dist.mean).sample.float()
        out.append(((decoded / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def untrained_copy(pipe, seed: int = 0):
    """The same architecture as `pipe` with random weights (the 'untrained' floor)."""
    from animate_backend.pipeline import AnimateAnyonePipeline

    dtype = pipe.denoising_unet.dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = {name: type(getattr(pipe, name)).from_config(getattr(pipe, name).config)
                  for name in ("vae", "reference_unet", "denoising_unet", "pose_guider")}
        models["image_encoder"] = type(pipe.image_encoder)(pipe.image_encoder.config)
        # A fresh Pose Guider outputs zeros; random output weights let the pose reach the UNet.
        torch.nn.init.normal_(models["pose_guider"].conv_out.weight, std=0.02)
    copy = AnimateAnyonePipeline(feature_extractor=pipe.feature_extractor, scheduler=pipe.scheduler, **models)
    copy.is_untrained = True
    copy.to(device=pipe.device, dtype=dtype)
    for name in models:
        getattr(copy, name).eval()
    copy.set_progress_bar_config(disable=True)
    return copy


def generate_take(pipe, take: Take, steps: int, guidance: float, seed: int) -> np.ndarray:
    """The model's frames for a take's poses after the first, float (F-1, H, W, 3) in [0, 1]."""
    from pose_bridge.keypoints import PoseSequence

    height, width = take.frames.shape[1:3]
    poses = PoseSequence(list(take.poses.frames[1:]), take.poses.fps)
    window = min(len(poses), pipe.motion_context_limit, 24)
    output = pipe(
        reference_image=take.reference, poses=poses, height=height, width=width,
        num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
        context_frames=window, context_overlap=min(4, window - 1), output_type="np",
    )
    return np.clip(np.asarray(output.frames)[0], 0.0, 1.0)


def evaluate(model: str, data: str | Path, *, steps: int = DEFAULTS.steps, guidance: float = DEFAULTS.guidance_scale,
             seed: int = 0, floors: bool = False, device: str = "cpu", limit: int | None = None,
             on_take: Callable[[str, str], None] | None = None) -> dict:
    """Score `model` (a pipeline folder or "tiny") on the held-out takes of `data`; returns the report."""
    from animate_backend.loading import load_pipeline

    takes = read_takes(data, limit)
    loaded = load_pipeline(model, device=device, precision="fp32")
    pipe = loaded.pipe
    rows: dict[str, Scores] = {"model": Scores(), "vae_ceiling": Scores()}
    if floors:
        rows["reference_copy"] = Scores()
        rows["untrained"] = Scores()
        random_pipe = untrained_copy(pipe, seed)
    for take in takes:
        targets = take.targets
        rows["model"].takes.append(score_frames(generate_take(pipe, take, steps, guidance, seed), targets))
        rows["vae_ceiling"].takes.append(score_frames(vae_roundtrip(pipe.vae, targets), targets))
        if floors:
            copies = np.repeat(take.reference[None], len(targets), axis=0)
            rows["reference_copy"].takes.append(score_frames(copies, targets))
            rows["untrained"].takes.append(
                score_frames(generate_take(random_pipe, take, steps, guidance, seed), targets))
        if on_take is not None:
            on_take(take.name, f"iou {rows['model'].takes[-1]['iou']:.3f}")
    height, width = takes[0].frames.shape[1:3]
    return {
        "model": loaded.model_id,
        "untrained_model": loaded.untrained,
        "data": str(data),
        "takes": len(takes),
        "frames": sum(len(t.targets) for t in takes),
        "size": [int(width), int(height)],
        "settings": {"steps": steps, "guidance": guidance, "seed": seed,
                     "silhouette_threshold": metrics.SILHOUETTE_THRESHOLD},
        "rows": {name: scores.mean() for name, scores in rows.items()},
        "per_take": {name: [{"take": t.name, **s} for t, s in zip(takes, scores.takes)]
                     for name, scores in rows.items()},
    }


def format_table(report: dict) -> str:
    """The report's mean scores as a text table, one row per model or floor."""
    header = f"{'':16s}" + "".join(f"{name:>16s}" for name in METRICS)
    lines = [header]
    for name, scores in report["rows"].items():
        lines.append(f"{name:16s}" + "".join(f"{scores[m]:16.3f}" for m in METRICS))
    return "\n".join(lines)


def _run(args) -> int:
    import sys

    report = evaluate(args.model, args.data, steps=args.steps, guidance=args.guidance_scale, seed=args.seed,
                      floors=args.floors, device=args.device, limit=args.limit,
                      on_take=None if args.quiet else lambda name, text: print(f"{name}: {text}", file=sys.stderr))
    print(f"{report['takes']} takes, {report['frames']} frames, {report['size'][0]}x{report['size'][1]}, "
          f"{args.steps} steps, guidance {args.guidance_scale:g}")
    print(format_table(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out)
        print(f"scores written to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model on held-out takes with rendered ground truth",
                       description=__doc__.splitlines()[0])
    p.add_argument("model", metavar="MODEL", help='a pipeline folder, or "tiny"')
    p.add_argument("--data", required=True, metavar="HELDOUT",
                   help="manifest of held-out takes (python -m blender_addon.commands.dataset ... --seed OTHER)")
    p.add_argument("--out", metavar="JSON", help="write the scores here")
    p.add_argument("--floors", action="store_true",
                   help="also score the floors: the reference still copied, and the untrained architecture")
    add_setting_arguments(p, ("steps", "guidance_scale", "seed"))
    add_setting_arguments(p, ("device",), defaults={"device": "cpu"})  # scores that do not depend on a GPU
    p.add_argument("--limit", type=whole(at_least=1), default=None, help="only the first N takes")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per take")
    p.set_defaults(func=_run)
