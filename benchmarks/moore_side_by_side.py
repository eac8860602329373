"""Side by side with Moore-AnimateAnyone's released pipeline: speed, memory and fidelity, same weights.

    python benchmarks/moore_side_by_side.py --moore-repo ~/Moore-AnimateAnyone \\
        --moore-python ~/moore-venv/bin/python --size narrow                    # speed, CPU
    python benchmarks/moore_side_by_side.py --moore-repo ... --moore-python ... \\
        --size tiny --check-fidelity                                            # same output?
    python benchmarks/moore_side_by_side.py --moore-repo ... --moore-python ... \\
        --size narrow --speed channels_last                                     # with a speed setting of ours

What it does:
1. Writes ONE set of random weights in Moore's release layout (denoising_unet.pth,
   reference_unet.pth, pose_guider.pth, motion_module.pth, and the base folders
   stable-diffusion-v1-5/unet, sd-vae-ft-mse, image_encoder), and converts them for our side
   with `python -m animate_backend convert-moore` and its defaults.
2. Makes one set of inputs: a reference image of the output size (square for the default
   sizes), skeleton images, initial latents. Both sides get the same pixels and latents.
3. Runs each side in its own process (`side_by_side_ours.py run` with our Python,
   `side_by_side_moore.py` with Moore's Python and checkout), one after the other, never both
   at once (SD 1.5-size random models take about 10 GB of memory each).

Speed mode (default): runs alternate (ours, Moore, ours, Moore, ...), and it prints seconds per
frame (wall and process CPU time), the split between denoising (everything before the VAE
decode, including the reference encoding) and decoding, each process's peak resident memory
(ru_maxrss, model loading included) and the ratios. Model loading is not timed. With
`--device cuda` (a CUDA torch in both environments) both sides run there in --precision, after
one untimed warm-up call per process, and the peak CUDA memory of the timed call is printed too.

With --count-flops the last run of each side makes one more, untimed call under torch's
operation counter (`flop_count.py`) and it prints each side's GFLOP per frame (denoising and
decoding) and the rate its timed runs achieved: how much of a difference in time is a
difference in work, and how much is the speed of the kernels.

Fidelity mode (--check-fidelity): one thread per process, and for each case the relative L2
difference of the final latents (Moore's as the reference), the largest absolute difference of
the decoded video (values in [0, 1]) and of the CLIP embedding, against the tolerances of the
fidelity issue: latents within 1e-3 and video within 5e-3 with one window, with and without
guidance; 3e-2 for both with Moore's closed-loop windows (windows of 4, overlap 2), which our
pipeline runs with `context_schedule="loop"` when it has that setting. Exits 1 if a case fails.

Preprocessing differs between the two pipelines in ways these inputs make irrelevant: Moore
stretches the reference to 224x224 for CLIP and resizes reference and skeletons to the output
size, ours letterboxes them into the output size and pads the CLIP input to a square. With a
square reference of the output size both reduce to the same pixels (a non-square size is
allowed and reported). Moore decodes one frame at a time, ours in chunks (decode_chunk_size).
Without guidance Moore sums overlapping windows' predictions instead of averaging them, so the
windowed case is compared with guidance only.

Moore's side needs a checkout of https://github.com/MooreThreads/Moore-AnimateAnyone and its own
Python environment: diffusers 0.24 (which imports huggingface_hub's `cached_download`, gone
from 0.26 on), a transformers of its time, and a CPU torch (Moore's code runs on any torch from
2.0 on; its pinned 2.0.1 CUDA build is several GB). These commands made the one measured here:

    git clone https://github.com/MooreThreads/Moore-AnimateAnyone ~/Moore-AnimateAnyone
    python3.11 -m venv ~/moore-venv
    ~/moore-venv/bin/pip install torch==2.13.0 "diffusers==0.24.0" "huggingface_hub<0.26" \\
        "transformers==4.38.2" einops omegaconf "numpy<2" pillow "accelerate<0.30"

(where pip's default torch is a CUDA build, install torch first with
`--index-url https://download.pytorch.org/whl/cpu`). Only Moore's model and pipeline modules
are imported, so the rest of its requirements.txt (gradio, onnxruntime, xformers...) is not needed.

The weights are cached in --workdir (reused when model and seed match); the converted folder
is made anew every run, so a changed converter is always measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from side_by_side_ours import WRITER as WEIGHTS_WRITER  # this folder is on sys.path; imports no torch

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
OURS_DRIVER = BENCHMARKS / "side_by_side_ours.py"
MOORE_DRIVER = BENCHMARKS / "side_by_side_moore.py"

# Video sizes per benchmark size (issue 13): "narrow" and "sd15" are the speed figures, "tiny" is
# the quick fidelity check. tiny and narrow use the same narrow model. Not smaller than 128x128:
# at 64x64 the UNet's lowest level is 1x1 latent pixel, where GroupNorm normalises 2 values per
# group and amplifies float32 rounding: with the same weights and a pipeline that computes what
# Moore's does, 64x64 differed by 2.5e-2 (latents, guidance 3.5) where 128x128 differed by 7e-6.
DEFAULTS = {
    "tiny": {"width": 128, "height": 128, "frames": 8, "steps": 10},
    "narrow": {"width": 256, "height": 256, "frames": 16, "steps": 10},
    "sd15": {"width": 256, "height": 256, "frames": 8, "steps": 4},
}
MODEL = {"tiny": "narrow", "narrow": "narrow", "sd15": "sd15"}  # the random model of each size
SINGLE_WINDOW = {"latents": 1e-3, "video": 5e-3}
LOOP_WINDOWS = {"latents": 3e-2, "video": 3e-2}
LOOP_CONTEXT = (4, 2)  # frames per window and overlap of the fidelity issue's closed-loop case


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--moore-repo", type=Path, required=True, help="a checkout of Moore-AnimateAnyone")
    parser.add_argument("--moore-python", type=Path, required=True, help="the Python of Moore's environment")
    parser.add_argument("--size", choices=tuple(DEFAULTS), default="narrow",
                        help="narrow: 256x256, 16 frames, 10 steps, narrow model; sd15: SD 1.5 widths, 256x256, "
                             "8 frames, 4 steps; tiny: the narrow model at 128x128, 8 frames, 10 steps")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--context-frames", type=int, default=24)
    parser.add_argument("--context-overlap", type=int, default=4)
    parser.add_argument("--context-schedule", choices=("tapered", "loop"), default=None,
                        help="our window schedule (speed mode; default: the pipeline's own); Moore always "
                             "uses its closed loop")
    parser.add_argument("--check-fidelity", action="store_true", help="compare outputs instead of timing")
    parser.add_argument("--speed", action="append", default=[], metavar="SETTING",
                        help="a speed setting of our pipeline to turn on (AnimateAnyonePipeline.enable_speed, "
                             "e.g. channels_last); repeatable; timed and fidelity-checked alike")
    parser.add_argument("--count-flops", action="store_true",
                        help="speed mode: the last run of each side counts its floating-point operations in one "
                             "more, untimed call (matrix products, convolutions, attention)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side in speed mode (alternated)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process in speed mode (default: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda needs a CUDA torch in both environments)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="model precision of both sides (fidelity: fp32 only)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls before the timed one, in each process (default: 1 on cuda, 0 on cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the weights and runs (default: a temporary folder, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the converted folder and the runs' files")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup is None:
        args.warmup = 1 if args.device.startswith("cuda") else 0
    if args.check_fidelity and args.precision != "fp32":
        parser.error("--check-fidelity compares float32 runs; leave --precision out")
    return args


# ----------------------------------------------------------------------------- inputs


def make_inputs(width: int, height: int, frames: int, seed: int) -> dict[str, np.ndarray]:
    """A reference image of the output size, skeleton images and initial latents."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    reference = np.stack([120 + 40 * np.sin(xx / 7), 110 + 30 * np.cos(yy / 9), 130 + 20 * np.sin((xx + yy) / 11)], -1)
    top, bottom, left, right = height // 5, 4 * height // 5, 2 * width // 5, 3 * width // 5
    reference[top:bottom, left:right] = (200, 60, 40)  # body
    reference[height // 10 : top, left + width // 40 : right - width // 40] = (230, 190, 160)  # head
    reference += rng.normal(0, 6, reference.shape)
    reference = np.clip(np.round(reference), 0, 255).astype(np.uint8)

    skeletons = np.zeros((frames, height, width, 3), dtype=np.uint8)
    limb = max(2, width // 16)
    for i in range(frames):
        x = width // 8 + (i * max(1, width // 20)) % (3 * width // 4)
        skeletons[i, height // 6 : 5 * height // 6, x : x + limb] = (255, 85, 0)
        skeletons[i, height // 3 : height // 3 + limb, width // 4 : 3 * width // 4] = (0, 255, 85)
        skeletons[i, height // 8 : height // 8 + 2 * limb, x - limb : x + 2 * limb] = (85, 0, 255)
    latents = rng.standard_normal((1, 4, frames, height // 8, width // 8)).astype(np.float32)
    return {"reference": reference, "skeletons": skeletons, "latents": latents}


# ----------------------------------------------------------------------------- processes


def call_logged(command: list[str], log: Path, env: dict, cwd: Path) -> None:
    """Run a process with its output in `log`; the log's end is shown if it fails."""
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n  " + "\n  ".join(tail))


class Runner:
    """Runs one side on one set of inputs, in its own process, in a numbered job folder."""

    def __init__(self, args: argparse.Namespace, run_dir: Path, weights: Path, converted: Path):
        self.args, self.run_dir, self.weights, self.converted = args, run_dir, weights, converted
        self.count = 0

    def run(self, side: str, inputs: dict[str, np.ndarray], settings: dict) -> tuple[dict, dict]:
        self.count += 1
        job_dir = self.run_dir / f"{self.count:02d}-{side}"
        job_dir.mkdir()
        np.savez(job_dir / "inputs.npz", **inputs)
        job = {"weights": str(self.weights), "converted": str(self.converted), **settings}
        (job_dir / "job.json").write_text(json.dumps(job, indent=1))
        if side == "ours":
            command = [sys.executable, str(OURS_DRIVER), "run", str(job_dir)]
            call_logged(command, job_dir / "log.txt", ours_env(), REPO)
        else:
            command = [str(self.args.moore_python), str(MOORE_DRIVER), str(self.args.moore_repo), str(job_dir)]
            call_logged(command, job_dir / "log.txt", moore_env(self.args.moore_repo), self.args.moore_repo)
        result = json.loads((job_dir / "result.json").read_text())
        return result, dict(np.load(job_dir / "result.npz"))


def ours_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def moore_env(moore_repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(moore_repo)
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the Hub
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def check_moore(args: argparse.Namespace) -> None:
    needed = [args.moore_repo / "src" / "pipelines" / "pipeline_pose2vid_long.py",
              args.moore_repo / "configs" / "inference" / "inference_v2.yaml"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise SystemExit(f"--moore-repo {args.moore_repo} is not a Moore-AnimateAnyone checkout (missing {missing}); "
                         "clone https://github.com/MooreThreads/Moore-AnimateAnyone")
    if not (args.moore_python.is_file() and os.access(args.moore_python, os.X_OK)):
        raise SystemExit(f"--moore-python {args.moore_python} is not an executable; see the environment recipe in "
                         f"{Path(__file__).name} --help")
    probe = subprocess.run(
        [str(args.moore_python), "-c", "import diffusers, transformers, torch; print(diffusers.__version__, "
         "transformers.__version__, torch.__version__)"],
        capture_output=True, text=True, env=moore_env(args.moore_repo), cwd=args.moore_repo,
    )
    if probe.returncode != 0:
        raise SystemExit(f"Moore's Python cannot import its libraries:\n{probe.stderr[-2000:]}")
    print(f"Moore's environment: diffusers {probe.stdout.split()[0]}, transformers {probe.stdout.split()[1]}, "
          f"torch {probe.stdout.split()[2]}")


def prepare_weights(args: argparse.Namespace, workdir: Path) -> Path:
    """The random weights in Moore's layout for this size's model and seed, written once per workdir.

    Written into a temporary folder and renamed when complete; a folder of ours (it has our
    stamp) from another version of the writer is replaced, anything else is left alone.
    """
    model = MODEL[args.size]
    weights = workdir / f"weights-{model}-seed{args.seed}"
    stamp = weights / "side_by_side.json"
    wanted = {"model": model, "seed": args.seed, "writer": WEIGHTS_WRITER}
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        if all(info.get(key) == value for key, value in wanted.items()):
            print(f"reusing the random weights in {weights}")
            return weights
    elif weights.exists():
        raise SystemExit(f"{weights} exists but was not written by this script; choose another --workdir")
    print(f"writing random {model} weights in Moore's layout to {weights}", flush=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{weights.name}.", dir=workdir))
    try:
        call_logged(
            [sys.executable, str(OURS_DRIVER), "write-weights", str(staging), "--model", model,
             "--seed", str(args.seed)],
            workdir / f"write-weights-{model}.log", ours_env(), REPO)
        if weights.exists():
            shutil.rmtree(weights)  # ours, from another version of the writer (checked above)
        os.replace(staging, weights)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return weights


def convert(args: argparse.Namespace, weights: Path, out: Path) -> None:
    print("converting them with `python -m animate_backend convert-moore` (its defaults)", flush=True)
    command = [sys.executable, "-m", "animate_backend", "convert-moore", "--moore", str(weights),
               "--base-unet", str(weights / "stable-diffusion-v1-5" / "unet"), "--vae", str(weights / "sd-vae-ft-mse"),
               "--image-encoder", str(weights / "image_encoder"), "--out", str(out)]
    call_logged(command, out.parent / "convert.log", ours_env(), REPO)
    print(f"  the converted denoising UNet stores {stored_dtypes(out / 'denoising_unet')} weights")


def stored_dtypes(folder: Path) -> str:
    """The tensor dtypes in a folder's safetensors files, read from their headers."""
    dtypes = set()
    for path in folder.glob("*.safetensors"):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        dtypes.update(entry["dtype"] for key, entry in header.items() if key != "__metadata__")
    return "/".join(sorted(dtypes)) or "no"


def our_capabilities() -> dict:
    done = subprocess.run([sys.executable, str(OURS_DRIVER), "capabilities"], capture_output=True, text=True,
                          env=ours_env(), cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"cannot import our pipeline:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- fidelity


@dataclass
class Case:
    name: str
    guidance: float
    context_frames: int
    context_overlap: int
    context_schedule: str | None
    tolerance: dict


def rel_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm((ours - reference).ravel()) / np.linalg.norm(reference.ravel()))


def check_fidelity(args: argparse.Namespace, runner: Runner, inputs: dict) -> int:
    if args.frames > 32:
        raise SystemExit("--check-fidelity needs at most 32 frames (one window of the motion modules)")
    cases = [
        Case(f"guidance {args.guidance:g}, one window", args.guidance, args.frames, 0, None, SINGLE_WINDOW),
        Case("no guidance, one window", 1.0, args.frames, 0, None, SINGLE_WINDOW),
    ]
    loop_frames, loop_overlap = LOOP_CONTEXT
    if not our_capabilities()["context_schedule"]:
        print("note: our pipeline has no context_schedule setting yet; the closed-loop windows case is skipped")
    elif args.frames <= loop_frames:
        print(f"note: {args.frames} frames fit one window of {loop_frames}; the closed-loop windows case is skipped")
    elif args.guidance <= 1.0:
        print("note: without guidance Moore sums overlapping windows instead of averaging; loop case skipped")
    else:
        cases.append(Case(f"guidance {args.guidance:g}, loop windows of {loop_frames} overlap {loop_overlap}",
                          args.guidance, loop_frames, loop_overlap, "loop", LOOP_WINDOWS))

    print(f"\nfidelity: {MODEL[args.size]} model, {args.width}x{args.height}, {args.frames} frames, "
          f"{args.steps} steps, 1 thread per process, our speed settings: {', '.join(args.speed) or 'none'}; "
          "differences of ours from Moore's")
    header = f"  {'case':<44} {'latents rel L2':>15} {'video max|d|':>13} {'CLIP rel L2':>12}  tolerance"
    print(header)
    failed = 0
    for case in cases:
        settings = {"width": args.width, "height": args.height, "steps": args.steps, "guidance": case.guidance,
                    "context_frames": case.context_frames, "context_overlap": case.context_overlap,
                    "context_schedule": case.context_schedule, "threads": 1, "device": args.device,
                    "precision": "fp32", "warmup": 0, "speed": args.speed}
        _, ours = runner.run("ours", inputs, settings)
        _, moore = runner.run("moore", inputs, settings)
        latents = rel_l2(ours["latents"], moore["latents"])
        video = float(np.abs(ours["video"] - moore["video"]).max())
        clip = rel_l2(ours["clip"], moore["clip"])
        ok = latents <= case.tolerance["latents"] and video <= case.tolerance["video"]
        failed += not ok
        print(f"  {case.name:<44} {latents:>15.2e} {video:>13.2e} {clip:>12.2e}  "
              f"{case.tolerance['latents']:.0e} / {case.tolerance['video']:.0e}  {'ok' if ok else 'FAIL'}", flush=True)
    print(f"{len(cases) - failed} of {len(cases)} cases within tolerance")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- speed


def per_frame(results: list[dict], key: str, frames: int) -> float:
    return statistics.median(r[key] for r in results) / frames


def speed(args: argparse.Namespace, runner: Runner, inputs: dict) -> int:
    settings = {"width": args.width, "height": args.height, "steps": args.steps, "guidance": args.guidance,
                "context_frames": args.context_frames, "context_overlap": args.context_overlap,
                "context_schedule": args.context_schedule, "threads": args.threads, "device": args.device,
                "precision": args.precision, "warmup": args.warmup, "speed": args.speed}
    if args.context_schedule == "loop" and not our_capabilities()["context_schedule"]:
        raise SystemExit("our pipeline has no context_schedule setting yet; leave --context-schedule out")
    if args.frames > args.context_frames and args.context_schedule != "loop":
        print("note: the video is longer than one window and our windows differ from Moore's (pass "
              "--context-schedule loop for the same windows)")
    print(f"\nspeed: {MODEL[args.size]} model on {args.device} in {args.precision}, {args.width}x{args.height}, "
          f"{args.frames} frames, {args.steps} steps, CFG {args.guidance:g}, "
          f"windows of {args.context_frames} (overlap {args.context_overlap}), "
          f"{args.repeats} run(s) per side, alternated, each in its own process; "
          f"our speed settings: {', '.join(args.speed) or 'none'}")
    results: dict[str, list[dict]] = {"ours": [], "moore": []}
    arrays: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for side in ("ours", "moore"):
            last = repeat == args.repeats - 1
            result, arrays[side] = runner.run(side, inputs, {**settings, "count_flops": args.count_flops and last})
            results[side].append(result)
            print(f"  run {repeat + 1} {side:<5}: {result['wall']:8.2f} s wall, {result['cpu']:8.2f} s CPU "
                  f"(denoise {result['denoise_wall']:.2f} s, decode {result['decode_wall']:.2f} s), "
                  f"peak RSS {result['peak_rss_mib']:.0f} MiB (loading: {result['peak_before_call_mib']:.0f}), "
                  f"{result['threads']} thread(s)", flush=True)

    frames = args.frames
    rows = [
        ("seconds per frame, wall", "wall"), ("seconds per frame, process CPU", "cpu"),
        ("  denoising (wall)", "denoise_wall"), ("  decoding (wall)", "decode_wall"),
        ("  denoising (CPU)", "denoise_cpu"), ("  decoding (CPU)", "decode_cpu"),
    ]
    print(f"\n  {'median of the runs':<34} {'ours':>10} {'Moore':>10} {'Moore/ours':>11}")
    for label, key in rows:
        ours, moore = per_frame(results["ours"], key, frames), per_frame(results["moore"], key, frames)
        print(f"  {label:<34} {ours:>10.3f} {moore:>10.3f} {moore / ours:>10.2f}x")
    ours_peak = max(r["peak_rss_mib"] for r in results["ours"])
    moore_peak = max(r["peak_rss_mib"] for r in results["moore"])
    print(f"  {'peak RSS, MiB (ours/Moore)':<34} {ours_peak:>10.0f} {moore_peak:>10.0f} "
          f"{ours_peak / moore_peak:>10.2f}x")
    if results["ours"][0].get("peak_device_mib") is not None:
        ours_device = max(r["peak_device_mib"] for r in results["ours"])
        moore_device = max(r["peak_device_mib"] for r in results["moore"])
        print(f"  {'peak device memory, MiB':<34} {ours_device:>10.0f} {moore_device:>10.0f} "
              f"{ours_device / moore_device:>10.2f}x")
    if args.count_flops:
        print_flops(results, frames)
    if arrays:
        latents = rel_l2(arrays["ours"]["latents"], arrays["moore"]["latents"])
        video = np.abs(arrays["ours"]["video"] - arrays["moore"]["video"]).max()
        print(f"  outputs of the last runs: final latents differ by {latents:.2e} (relative L2), "
              f"video by {video:.2e} (max)")
    return 0


def print_flops(results: dict[str, list[dict]], frames: int) -> None:
    """Work per frame of each side's last run, and the rate its timed runs achieved."""
    ours, moore = results["ours"][-1], results["moore"][-1]
    print(f"\n  {'GFLOP per frame':<34} {'ours':>10} {'Moore':>10} {'Moore/ours':>11}")
    for label, work in (("whole call", lambda r: r["gflop"]), ("  denoising", lambda r: r["gflop"] - r["decode_gflop"]),
                        ("  decoding", lambda r: r["decode_gflop"])):
        print(f"  {label:<34} {work(ours) / frames:>10.1f} {work(moore) / frames:>10.1f} "
              f"{work(moore) / work(ours):>10.2f}x")
    rate = {side: results[side][-1]["gflop"] / statistics.median(r["wall"] for r in results[side]) for side in results}
    print(f"  {'GFLOP/s achieved (median wall)':<34} {rate['ours']:>10.1f} {rate['moore']:>10.1f} "
          f"{rate['moore'] / rate['ours']:>10.2f}x")
    for side in ("ours", "moore"):
        operators = sorted(results[side][-1]["gflop_by_operator"].items(), key=lambda item: -item[1])
        print(f"  {side} by operator (GFLOP per frame): "
              + ", ".join(f"{name.removeprefix('aten.')} {value / frames:.1f}" for name, value in operators))


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    args.moore_repo = args.moore_repo.expanduser().resolve()
    args.moore_python = args.moore_python.expanduser()
    check_moore(args)
    if args.width % 8 or args.height % 8:
        raise SystemExit("--width and --height must be multiples of 8")
    if args.width != args.height:
        print("note: the reference is not square; Moore stretches it to 224x224 for CLIP, ours pads it to a "
              "square, so the CLIP embeddings differ")

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="moore-side-by-side-")) if temporary else args.workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    try:
        weights = prepare_weights(args, workdir)
        converted = run_dir / "converted"
        convert(args, weights, converted)
        inputs = make_inputs(args.width, args.height, args.frames, args.seed)
        runner = Runner(args, run_dir, weights, converted)
        return check_fidelity(args, runner, inputs) if args.check_fidelity else speed(args, runner, inputs)
    finally:
        if args.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            if temporary:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
