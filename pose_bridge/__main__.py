"""Command line: python -m pose_bridge draw | retarget | detect.

    python -m pose_bridge draw INPUT --out DIR [--size WxH] [--no-hands] [--no-face] [--video] [--scale-strokes] [--force]
    python -m pose_bridge retarget --reference REF.json --driving SEQ --out OUT.json [--mode chain|global] [--force]
    python -m pose_bridge detect INPUT --models DIR --out poses.json [--force]

User errors end with exit code 2 and one line "error: ..." on stderr. Progress bars
(tqdm, when installed) go to stderr. An existing output is replaced only with --force, and
even then only when it is what the command writes (skeleton images, a video, a pose file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from pose_bridge.cli_args import whole
from pose_bridge.errors import PoseBridgeError, PoseFileError

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _progress(items: Iterable, total: int | None, desc: str) -> Iterator:
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, total=total, desc=desc, unit="frame", file=sys.stderr, leave=False)


def _size(text: str) -> tuple[int, int]:
    from pose_bridge.keypoints import MAX_CANVAS_SIDE

    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x768, got {text!r}") from None
    if not (0 < width <= MAX_CANVAS_SIDE and 0 < height <= MAX_CANVAS_SIDE):
        raise argparse.ArgumentTypeError(f"size must be positive and at most {MAX_CANVAS_SIDE} a side, got {text!r}")
    return width, height


def _is_pose_file(path: Path) -> bool:
    """Whether `path` is a pose file these commands write (a sequence or an OpenPose frame)."""
    import json

    from pose_bridge.openpose_json import SEQUENCE_FORMAT

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("format") == SEQUENCE_FORMAT or isinstance(data.get("people"), list))


def _check_output(path: Path, force: bool, what: str, is_ours=lambda path: True) -> None:
    """Refuse to write `path` over something, unless --force and it is `what` this command writes.

    Temporary files of `path` that a killed earlier run left beside it are removed.
    """
    from pose_bridge.files import remove_partial_files_of

    if path.is_dir():
        raise PoseFileError(f"{path} is a folder; give the {what} to write")
    if path.exists():
        if not force:
            raise PoseFileError(f"{path} already exists; choose another --out, or pass --force to replace it")
        if not is_ours(path):
            raise PoseFileError(f"{path} is not a {what}; it is never replaced, even with --force: choose another --out")
    remove_partial_files_of(path)


def cmd_draw(args: argparse.Namespace) -> int:
    from pose_bridge.drawing import draw_sequence, stroke_scale_for
    from pose_bridge.image_io import write_png, write_video
    from pose_bridge.openpose_json import load_poses

    seq = load_poses(args.input, canvas_size=args.canvas)
    if args.size:
        seq = seq.fitted(*args.size)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PoseFileError(f"--out {out} is a file; give a folder for the skeleton images")
    # Every output is checked, and every pose (drawable coordinates), before the first file
    # is written: a bad input never leaves part of a set of frames.
    if args.video:
        target = out / f"{Path(args.input).stem or 'poses'}.mp4"
        _check_output(target, args.force, "video")
    else:
        targets = [out / f"{i + 1:04d}.png" for i in range(len(seq))]
        for target in targets:
            _check_output(target, args.force, "skeleton image", lambda path: path.suffix == ".png")
    for pose in seq:
        pose.check_extent()
    scale = stroke_scale_for(seq.canvas_width, seq.canvas_height) if args.scale_strokes else 1.0
    images = draw_sequence(seq, hands=not args.no_hands, face=not args.no_face, stroke_scale=scale)
    images = _progress(images, len(seq), "drawing")
    if args.video:
        write_video(target, images, seq.fps)
        print(target)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for target, image in zip(targets, images):
            write_png(target, image)
        print(f"{len(seq)} skeleton images in {out}")
    return 0


def cmd_retarget(args: argparse.Namespace) -> int:
    from pose_bridge.openpose_json import load_poses, write_sequence
    from pose_bridge.retarget import retarget_sequence

    _check_output(Path(args.out), args.force, "pose file", _is_pose_file)
    reference = load_poses(args.reference)[0]  # a frame file, or the first frame of a sequence
    driving = load_poses(args.driving)
    result = retarget_sequence(driving, reference, mode=args.mode, anchor=args.anchor)
    write_sequence(result, args.out)
    print(args.out)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from pose_bridge.detect import DWPoseDetector
    from pose_bridge.image_io import read_image, video_frame_count
    from pose_bridge.openpose_json import write_frame, write_sequence
    from pose_bridge.errors import PoseFileError

    source = Path(args.input)
    if not source.exists():
        raise PoseFileError(f"{source} does not exist")
    detector = DWPoseDetector(args.models, device=args.device, detect_resolution=args.detect_resolution or None)

    def video(path: Path, target: Path) -> None:
        from pose_bridge.image_io import read_video, video_fps

        _check_output(target, args.force, "pose file", _is_pose_file)
        fps = video_fps(path)
        frames = _progress(read_video(path), video_frame_count(path), path.name)
        write_sequence(detector.detect_frames(frames, fps), target)
        print(target)

    if source.is_dir():
        videos = sorted(p for p in source.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise PoseFileError(f"{source} holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
        out = Path(args.out)
        if out.suffix.lower() == ".json":
            raise PoseFileError(f"INPUT is a folder of videos: --out must be a folder, not {out}")
        for path in videos:  # all checked before the first (slow) detection
            _check_output(out / f"{path.stem}.poses.json", args.force, "pose file", _is_pose_file)
        for path in videos:
            video(path, out / f"{path.stem}.poses.json")
    else:
        out = Path(args.out)
        if out.is_dir():
            out = out / f"{source.stem}.poses.json"
        if source.suffix.lower() in IMAGE_SUFFIXES:
            _check_output(out, args.force, "pose file", _is_pose_file)
            write_frame(detector.detect_image(read_image(source)), out)
            print(out)
        else:
            video(source, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pose_bridge", description="Poses as data: draw, retarget, detect.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    draw = sub.add_parser("draw", help="draw skeleton images (DWPose style) from pose files")
    draw.add_argument("input", help="a sequence file, an OpenPose frame file, or a folder of frame files")
    draw.add_argument("--out", required=True, help="output folder (0001.png... or <input>.mp4)")
    draw.add_argument("--size", type=_size, help="draw at WxH (the poses are fitted, aspect kept)")
    draw.add_argument("--canvas", type=_size, help="canvas size of pose files that do not state one")
    draw.add_argument("--no-hands", action="store_true")
    draw.add_argument("--no-face", action="store_true")
    draw.add_argument("--video", action="store_true", help="write one mp4 instead of PNG files")
    draw.add_argument("--scale-strokes", action="store_true", help="scale stroke sizes with resolution (1x at 512 px)")
    draw.add_argument("--force", action="store_true", help="replace skeleton images or a video already there")
    draw.set_defaults(func=cmd_draw)

    retarget = sub.add_parser("retarget", help="give a driving sequence the reference's proportions")
    retarget.add_argument("--reference", required=True, help="OpenPose frame file of the reference character")
    retarget.add_argument("--driving", required=True, help="sequence file, frame file or folder of frame files")
    retarget.add_argument("--out", required=True, help="output sequence file")
    retarget.add_argument("--mode", choices=("chain", "global"), default="chain")
    retarget.add_argument("--anchor", choices=("neck", "mid_hip"), default="neck")
    retarget.add_argument("--force", action="store_true", help="replace OUT.json if it is a pose file")
    retarget.set_defaults(func=cmd_retarget)

    detect = sub.add_parser("detect", help="detect poses with DWPose (ONNX) in an image, a video or a folder of videos")
    detect.add_argument("input", help="an image, a video, or a folder of videos")
    detect.add_argument("--models", required=True, help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx")
    detect.add_argument("--out", required=True, help="output file (a folder when INPUT is a folder: <name>.poses.json each)")
    detect.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    detect.add_argument("--force", action="store_true", help="replace pose files already there")
    detect.add_argument("--detect-resolution", type=whole(at_least=0, at_most=4096), default=512,
                        help="short side the models see (512, as Moore-AnimateAnyone); 0 = the image's own size")
    detect.set_defaults(func=cmd_detect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except PoseBridgeError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
