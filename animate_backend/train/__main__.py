"""`python -m animate_backend.train vae|stage1|stage2 --config CONFIG.yaml [--set key=value ...]`.

`vae` (also `stage0`) trains the VAE of a model size from scratch (animate_backend/train/vae.py),
so that stage 1 can train a whole model with no downloaded weights.

Under `accelerate launch -m animate_backend.train ...` the same command runs on every
process of accelerate's configuration (CPU, one or several GPUs, DeepSpeed).

Preparing real videos (keypoints with DWPose, then a manifest):

    python -m pose_bridge detect videos/ --models dwpose/ --out keypoints/
    python -m animate_backend.train manifest videos/ --keypoints keypoints/ --out data/train.jsonl

Synthetic data from a rigged character: `python -m blender_addon.commands.dataset SCENE.blend --out DIR`.
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from animate_backend.errors import BackendError
from pose_bridge.errors import PoseBridgeError


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set needs KEY=VALUE (e.g. optim.max_train_steps=100), got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m animate_backend.train", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"vae": "stage 0: train the VAE from scratch", "stage1": "train stage 1 (paper section 3.3)",
             "stage2": "train stage 2 (paper section 3.3)"}
    for stage, help_text in helps.items():
        run = sub.add_parser(stage, help=help_text, aliases=["stage0"] if stage == "vae" else [])
        run.add_argument("--config", required=True, help="YAML training config (see animate_backend/configs/)")
        run.add_argument("--set", dest="overrides", action="append", type=_parse_override, default=[],
                         metavar="KEY=VALUE", help="override a setting, dotted keys (repeatable)")
        run.add_argument("--resume", default=None, help="a checkpoint folder or 'latest'")
    manifest = sub.add_parser("manifest", help="write a manifest of videos and their keypoint files")
    manifest.add_argument("videos", help="folder of videos")
    manifest.add_argument("--keypoints", help="folder of <video name>.poses.json files (default: the video folder)")
    manifest.add_argument("--out", required=True, help="manifest file to write (.jsonl)")
    return parser


def write_video_manifest(args: argparse.Namespace) -> int:
    from animate_backend.train.manifest import video_manifest_entries, write_manifest

    entries = video_manifest_entries(args.videos, args.keypoints)
    write_manifest(args.out, entries)
    print(f"{args.out}: {len(entries)} clips")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from animate_backend.train.config import load_config
    from animate_backend.train.trainer import train
    from animate_backend.train.vae import train_vae

    try:
        if args.command == "manifest":
            return write_video_manifest(args)
        overrides = dict(args.overrides)
        overrides["stage"] = {"vae": 0, "stage0": 0, "stage1": 1, "stage2": 2}[args.command]
        if args.resume:
            overrides["resume_from_checkpoint"] = args.resume
        config = load_config(args.config, overrides)
        folder = train_vae(config) if config.stage == 0 else train(config)
    except (BackendError, PoseBridgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume latest", file=sys.stderr)
        return 130
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
