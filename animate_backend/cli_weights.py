"""Weight commands of `python -m animate_backend`: convert-moore, fetch-weights, make-tiny."""

from __future__ import annotations

import argparse
import sys

from pose_bridge.cli_args import whole

# "keep": each weight keeps the precision of the file it comes from (Moore's .pth files are fp32).
DTYPES = ("keep", "fp16", "fp32", "bf16")
DTYPE_HELP = "weights precision on disk: keep the checkpoints' own (default; Moore's are fp32) or round to one"


def _dtype(name: str):
    import torch

    return {"keep": None, "fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[name]


def _stage(text: str) -> None:
    print(f"[weights] {text}", file=sys.stderr, flush=True)


def register(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser(
        "convert-moore",
        help="convert Moore-AnimateAnyone .pth weights into a pipeline folder",
        description="Turn the four Moore-AnimateAnyone .pth files plus the base models into our pipeline folder. "
        "Strict: every weight is placed and checked, problems are listed together.",
    )
    convert.add_argument("--moore", required=True, help="folder with denoising_unet.pth, reference_unet.pth, pose_guider.pth, motion_module.pth")
    convert.add_argument("--base-unet", required=True, help="SD 1.5 unet folder (its config.json is used)")
    convert.add_argument("--vae", required=True, help="sd-vae-ft-mse folder")
    convert.add_argument("--image-encoder", required=True, help="sd-image-variations-diffusers image_encoder folder")
    convert.add_argument("--out", required=True, help="pipeline folder to write")
    convert.add_argument("--dtype", choices=DTYPES, default="keep", help=DTYPE_HELP)
    convert.add_argument("--beta-schedule", choices=("linear", "scaled_linear"), default="linear",
                         help="DDIM beta schedule (Moore's inference config: linear)")
    convert.add_argument("--force", action="store_true", help="replace --out if it holds a pipeline folder (only after success)")
    convert.set_defaults(func=run_convert)

    fetch = sub.add_parser(
        "fetch-weights",
        help="download the public weights and convert them",
        description="Download Moore-AnimateAnyone's weights and the base models from the Hugging Face Hub "
        "(progress, resume, cache; HF_HUB_OFFLINE respected), then convert them.",
    )
    fetch.add_argument("--out", required=True, help="pipeline folder to write")
    fetch.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: the standard cache)")
    fetch.add_argument("--offline", action="store_true", help="use only files already in the cache")
    fetch.add_argument("--dtype", choices=DTYPES, default="keep", help=DTYPE_HELP)
    fetch.add_argument("--force", action="store_true", help="replace --out if it holds a pipeline folder (only after success)")
    fetch.set_defaults(func=run_fetch)

    tiny = sub.add_parser(
        "make-tiny",
        help="write a tiny random (untrained) pipeline, for tests and demos",
        description="Write a tiny randomly initialised pipeline of the real architecture. Its output is noise; "
        "the folder is marked untrained.",
    )
    tiny.add_argument("--out", required=True, help="pipeline folder to write")
    tiny.add_argument("--seed", type=whole(at_least=0, at_most=2**63 - 1), default=0, help="random seed of the weights")
    tiny.add_argument("--force", action="store_true", help="replace --out if it holds a pipeline folder")
    tiny.set_defaults(func=run_make_tiny)


def run_convert(args: argparse.Namespace) -> int:
    from animate_backend.convert_moore import convert_moore

    out = convert_moore(
        args.moore, args.base_unet, args.vae, args.image_encoder, args.out,
        dtype=_dtype(args.dtype), overwrite=args.force, beta_schedule=args.beta_schedule, on_stage=_stage,
    )
    _stage(f"done: {out}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from animate_backend.fetch_weights import fetch_weights

    out = fetch_weights(
        args.out, cache_dir=args.cache_dir, offline=args.offline, dtype=_dtype(args.dtype),
        overwrite=args.force, on_stage=_stage,
    )
    _stage(f"done: {out}")
    return 0


def run_make_tiny(args: argparse.Namespace) -> int:
    from animate_backend.tiny import make_tiny_pipeline, save_pipeline_folder

    out = save_pipeline_folder(make_tiny_pipeline(seed=args.seed), args.out, overwrite=args.force)
    _stage(f"wrote a tiny UNTRAINED pipeline (random weights, output is noise) to {out}")
    return 0
