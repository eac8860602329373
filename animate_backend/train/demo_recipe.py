"""`make train-demo`: the small demo model, trained from scratch on the CPU, resumably.

    python -m animate_backend.train.demo_recipe --out train_demo [--stop-after STEP] [--threads N]

Steps, each a separate process, each skipped when its output is complete (so running the
same command again continues where a stopped run ended; the training steps resume from
their newest complete checkpoint):

    data      the demo character (blender_addon.commands.demo_scene) rendered by `python -m
              blender_addon.commands.dataset --demo-character`: random poses and the walk/wave action,
              random cameras, lights and plain grey backgrounds, 64x64       -> OUT/data/train
    heldout   the same from another seed, for evaluation                      -> OUT/data/heldout
    vae       stage 0, train_demo_vae.yaml                                     -> OUT/vae/vae
    stage1    stage 1 from scratch with that VAE, train_demo_stage1.yaml      -> OUT/stage1/pipeline
    stage2    motion modules, train_demo_stage2.yaml                           -> OUT/stage2/pipeline
    pipeline  stage 2's pipeline in fp16                                       -> OUT/pipeline
    evaluate  `python -m animate_backend evaluate` on the held-out takes       -> OUT/evaluation.json
    card      the model card: recipe, data, steps, CPU time, metrics          -> OUT/pipeline/MODEL_CARD.md

Seeds are fixed. Every step's wall and CPU time goes to OUT/timings.json and its log to
OUT/logs/STEP.log. Torch runs TRAIN_THREADS threads (default 1: on a busy machine more
threads wait on each other, see the README's training section).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
STEPS = ("data", "heldout", "vae", "stage1", "stage2", "pipeline", "evaluate", "card")
SIZE = (64, 64)
TRAIN_TAKES, HELDOUT_TAKES, TAKE_FRAMES = 160, 8, 16
TRAIN_SEED, HELDOUT_SEED = 0, 1000


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Recipe:
    def __init__(self, out: Path, threads: int, python: str = sys.executable, takes: int = TRAIN_TAKES,
                 max_steps: int | None = None):
        self.out = out
        self.threads = threads
        self.takes = takes
        self.max_steps = max_steps  # smoke runs: every stage's step count
        self.python = python
        self.timings_path = out / "timings.json"

    # -- bookkeeping

    def timings(self) -> dict:
        if self.timings_path.is_file():
            return json.loads(self.timings_path.read_text(encoding="utf-8"))
        return {}

    def _record(self, step: str, wall: float, cpu: float) -> None:
        timings = self.timings()
        entry = timings.get(step, {"wall_seconds": 0.0, "cpu_seconds": 0.0, "runs": 0})
        entry["wall_seconds"] = round(entry["wall_seconds"] + wall, 1)
        entry["cpu_seconds"] = round(entry["cpu_seconds"] + cpu, 1)
        entry["runs"] += 1
        timings[step] = entry
        tmp = self.timings_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.timings_path)

    def run(self, step: str, command: list[str]) -> None:
        """Run one step's command, its output appended to OUT/logs/STEP.log; a failure stops the recipe."""
        log_dir = self.out / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        threads = str(self.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
        # The checkout this module is in comes first, for the child processes too.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        print(f"[train-demo] {step}: {' '.join(command)}", flush=True)
        started, cpu_before = time.monotonic(), _children_cpu_seconds()
        with open(log_dir / f"{step}.log", "a", encoding="utf-8") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            log.flush()
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        self._record(step, time.monotonic() - started, _children_cpu_seconds() - cpu_before)
        if code != 0:
            raise SystemExit(f"[train-demo] step {step} failed (exit {code}); see {log_dir / (step + '.log')}. "
                             "Fix the cause and run the same command again: finished steps are skipped.")

    # -- steps: (done?, do)

    def _render(self, step: str, folder: Path, takes: int, seed: int) -> None:
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # a stopped render starts again (a few minutes)
        self.run(step, [self.python, "-m", "blender_addon.commands.dataset", "--demo-character", "--out", str(partial),
                        "--takes", str(takes), "--frames", str(TAKE_FRAMES), "--size", f"{SIZE[0]}x{SIZE[1]}",
                        "--seed", str(seed), "-q"])
        lines = (partial / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        if len(lines) != takes:
            raise SystemExit(f"[train-demo] {step}: {len(lines)} takes rendered, {takes} expected")
        os.replace(partial, folder)

    def _train(self, step: str, command: str, config: str, output_dir: Path, extra: list[str]) -> None:
        sets = ["--set", f"output_dir={output_dir}", "--set", f"data.manifest={self.train_manifest}",
                "--set", f"cpu_threads={self.threads}", *extra]
        if self.max_steps:
            sets += ["--set", f"optim.max_train_steps={self.max_steps}", "--set", "validation.every_steps=0"]
        self.run(step, [self.python, "-m", "animate_backend.train", command, "--config", str(CONFIG_DIR / config),
                        *sets, "--resume", "latest"])

    @property
    def train_manifest(self) -> Path:
        return self.out / "data" / "train" / "manifest.jsonl"

    def outputs(self) -> dict[str, Path]:
        o = self.out
        return {
            "data": o / "data" / "train" / "manifest.jsonl",
            "heldout": o / "data" / "heldout" / "manifest.jsonl",
            "vae": o / "vae" / "vae" / "config.json",
            "stage1": o / "stage1" / "pipeline" / "model_index.json",
            "stage2": o / "stage2" / "pipeline" / "model_index.json",
            "pipeline": o / "pipeline" / "model_index.json",
            "evaluate": o / "evaluation.json",
            "card": o / "pipeline" / "MODEL_CARD.md",
        }

    def do(self, step: str) -> None:
        o = self.out
        if step == "data":
            self._render(step, o / "data" / "train", self.takes, TRAIN_SEED)
        elif step == "heldout":
            self._render(step, o / "data" / "heldout", HELDOUT_TAKES, HELDOUT_SEED)
        elif step == "vae":
            self._train(step, "vae", "train_demo_vae.yaml", o / "vae", [])
        elif step == "stage1":
            self._train(step, "stage1", "train_demo_stage1.yaml", o / "stage1",
                        ["--set", f"model.vae={o / 'vae' / 'vae'}"])
        elif step == "stage2":
            self._train(step, "stage2", "train_demo_stage2.yaml", o / "stage2",
                        ["--set", f"model.pretrained_pipeline={o / 'stage1' / 'pipeline'}"])
        elif step == "pipeline":
            self.run(step, [self.python, "-m", "animate_backend.train.demo_recipe", "--export",
                            str(o / "stage2" / "pipeline"), str(o / "pipeline")])
        elif step == "evaluate":
            self.run(step, [self.python, "-m", "animate_backend", "evaluate", str(o / "pipeline"),
                            "--data", str(o / "data" / "heldout" / "manifest.jsonl"),
                            "--out", str(o / "evaluation.json"), "--floors", "--device", "cpu"])
        elif step == "card":
            write_model_card(o, self.timings(), self.takes, self.max_steps)

    def main(self, stop_after: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for step in STEPS:
            if self.outputs()[step].is_file():
                print(f"[train-demo] {step}: done ({self.outputs()[step]})", flush=True)
            else:
                self.do(step)
            if step == stop_after:
                print(f"[train-demo] stopped after {step} (--stop-after); run again without it to continue",
                      flush=True)
                return
        print(f"[train-demo] finished: {self.out / 'pipeline'}", flush=True)


def export_fp16(source: Path, target: Path) -> None:
    """Stage 2's pipeline, weights in fp16 (half the size; generation loads them as it needs)."""
    import torch

    from animate_backend.pipeline import AnimateAnyonePipeline
    from animate_backend.tiny import save_pipeline_folder

    pipe = AnimateAnyonePipeline.from_pretrained(str(source), dtype=torch.float16)
    save_pipeline_folder(pipe, target, overwrite=True)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_model_card(out: Path, timings: dict, takes: int = TRAIN_TAKES, max_steps: int | None = None) -> Path:
    """OUT/pipeline/MODEL_CARD.md from the configs, OUT/evaluation.json and OUT/timings.json."""
    import yaml

    evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    configs = {name: yaml.safe_load((CONFIG_DIR / f"train_demo_{name}.yaml").read_text(encoding="utf-8"))
               for name in ("vae", "stage1", "stage2")}
    if max_steps:
        for config in configs.values():
            config["optim"]["max_train_steps"] = max_steps
    size = json.loads((CONFIG_DIR / "demo.json").read_text(encoding="utf-8"))
    weights = sum(p.stat().st_size for p in (out / "pipeline").rglob("*.safetensors"))
    rows = evaluation["rows"]
    columns = ("iou", "iou_reversed", "psnr", "ssim", "temporal_error")
    table = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, scores in rows.items():
        table.append(f"| {name} | " + " | ".join(_fmt(scores.get(c, "")) for c in columns) + " |")
    steps = [f"| {step} | {t['wall_seconds'] / 60:.1f} | {t['cpu_seconds'] / 60:.1f} |" for step, t in timings.items()]
    lines = [
        "# Animate Anyone demo model",
        "",
        "A small model of the full Animate Anyone architecture (ReferenceNet, denoising UNet with",
        "motion modules, Pose Guider, VAE, CLIP image encoder) trained from scratch, on the CPU, on",
        "renders of **one character: the demo character** of `make demo` (blender_addon/commands/demo_scene.py).",
        "It animates that character only, at 64x64: it has never seen another character, so another",
        "reference image will not be followed. It exists so that `make demo` shows a real animation",
        "with no downloaded weights. For real use, load the released weights (`--model`).",
        "",
        "## Recipe",
        "",
        "`make train-demo` (animate_backend/train/demo_recipe.py), fixed seeds:",
        "",
        f"- data: {takes} takes of {TAKE_FRAMES} frames at {SIZE[0]}x{SIZE[1]} (half random poses, half the "
        "walk/wave action; random camera orbit, sun, grey background), seed "
        f"{TRAIN_SEED}; held out: {HELDOUT_TAKES} takes from seed {HELDOUT_SEED}",
        f"- model: animate_backend/configs/demo.json (UNet {size['unet']['block_out_channels']}, "
        f"VAE {size['vae']['block_out_channels']} with {size['vae']['latent_channels']} latent channels, "
        f"Pose Guider {size['pose_guider']['block_out_channels']}, CLIP {size['image_encoder']['hidden_size']} wide, "
        "frozen at random)",
        f"- stage 0 (VAE): {configs['vae']['optim']['max_train_steps']} steps of batch "
        f"{configs['vae']['optim']['train_batch_size']}, L1 + SSIM + gradient + KL (train_demo_vae.yaml)",
        f"- stage 1: {configs['stage1']['optim']['max_train_steps']} steps of batch "
        f"{configs['stage1']['optim']['train_batch_size']} (train_demo_stage1.yaml)",
        f"- stage 2: {configs['stage2']['optim']['max_train_steps']} steps of batch "
        f"{configs['stage2']['optim']['train_batch_size']} clips of {configs['stage2']['data']['clip_frames']} "
        "frames (train_demo_stage2.yaml)",
        f"- weights: fp16 safetensors, {weights / 1e6:.1f} MB",
        "",
        "| step | wall minutes | CPU minutes |",
        "|---|---|---|",
        *steps,
        "",
        "## Held-out scores",
        "",
        f"{evaluation['takes']} held-out takes, {evaluation['frames']} generated frames, "
        f"{evaluation['settings']['steps']} DDIM steps, guidance {evaluation['settings']['guidance']} "
        "(`python -m animate_backend evaluate`). IoU: silhouettes of generated and true frames "
        "(figure = pixels away from the plain background colour); iou_reversed: the same against the "
        "time-reversed truth (a model ignoring the poses scores the same on both); temporal_error: "
        "how far the frame-to-frame change differs from the truth's.",
        "",
        *table,
        "",
    ]
    card = out / "pipeline" / "MODEL_CARD.md"
    card.write_text("\n".join(lines), encoding="utf-8")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m animate_backend.train.demo_recipe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="train_demo", help="output folder (default train_demo)")
    parser.add_argument("--stop-after", choices=STEPS, default=STEPS[-1], help="stop after this step")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TRAIN_THREADS", "1")),
                        help="torch threads (default $TRAIN_THREADS or 1)")
    parser.add_argument("--takes", type=int, default=TRAIN_TAKES, help=f"training takes (default {TRAIN_TAKES})")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="train every stage this many steps instead of its config's (smoke runs)")
    parser.add_argument("--export", nargs=2, metavar=("SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export:
        export_fp16(Path(args.export[0]), Path(args.export[1]))
        return 0
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    Recipe(Path(args.out).expanduser().resolve(), args.threads, takes=args.takes,
           max_steps=args.max_steps).main(args.stop_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
