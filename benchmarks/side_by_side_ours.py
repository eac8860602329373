"""Our side of `moore_side_by_side.py`: random weights in Moore's release layout, and our pipeline's run.

Run by `moore_side_by_side.py` with our Python, one process per task, so that each run's peak
memory is its own:

    python benchmarks/side_by_side_ours.py write-weights FOLDER --model narrow --seed 0
    python benchmarks/side_by_side_ours.py capabilities
    python benchmarks/side_by_side_ours.py run JOB_FOLDER

`write-weights` writes one set of random weights as Moore-AnimateAnyone publishes them (the four
.pth files) next to the base-model folders its scripts read (`stable-diffusion-v1-5/unet`,
`sd-vae-ft-mse`, `image_encoder`). `run` reads `job.json` and `inputs.npz` from JOB_FOLDER,
runs AnimateAnyonePipeline on the converted folder and writes `result.json` (timings, memory)
and `result.npz` (final latents, decoded video, CLIP embedding).
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np

import flop_count  # a sibling of this script

# The random models: "narrow" (our tiny test model's widths) and "sd15" (the released
# architecture). Three things differ from our tiny test config, so that the
# same files mean the same model to Moore's code:
# - GroupNorm with 32 groups everywhere: Moore's motion modules always use 32 groups;
# - the CLIP vision tower takes 224x224 images: Moore resizes the reference to 224x224;
# - the Pose Guider has the released channels (16, 32, 96, 256), which convert-moore assumes.
MODELS = ("narrow", "sd15")
# The version of write_weights: moore_side_by_side.py rewrites cached weights of another version.
WRITER = 3


def model_config(model: str) -> dict:
    from animate_backend.configs import load_size_config

    if model not in MODELS:
        raise SystemExit(f"unknown model {model!r}; choose one of {MODELS}")
    if model == "sd15":
        return load_size_config("sd15")
    config = load_size_config("tiny")
    config["unet"]["norm_num_groups"] = 32
    config["motion"]["motion_norm_num_groups"] = 32
    config["image_encoder"].update(image_size=224, patch_size=56)
    config["pose_guider"]["block_out_channels"] = [16, 32, 96, 256]
    return config


def perturb_norms(model, generator) -> None:
    """Random affine parameters for every norm layer (default init is all ones and zeros), so a
    norm loaded under the wrong name would change the output instead of going unnoticed."""
    import torch

    for module in model.modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.weight is not None:
            with torch.no_grad():
                module.weight.copy_(1.0 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


def write_weights(folder: Path, model: str, seed: int) -> None:
    """Moore's released files for one random model: FOLDER/{denoising_unet,reference_unet,
    pose_guider,motion_module}.pth and the base folders stable-diffusion-v1-5/unet (config and
    weights; Moore's from_pretrained_2d reads the weights too), sd-vae-ft-mse, image_encoder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from animate_backend.configs import build_denoising_unet
    from animate_backend.convert_moore import moore_state_dicts
    from animate_backend.models.pose_guider import PoseGuider

    config = model_config(model)
    generator = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)

    # One model at a time, saved and dropped, so an SD 1.5-size set fits in about 11 GB.
    # moore_state_dicts names each part as Moore's files do; the parts not at hand are empty.
    def save_moore_file(**part) -> None:
        empty = torch.nn.Module()
        parts = {"denoising_unet": empty, "reference_unet": empty, "pose_guider": empty, **part}
        for name, state in moore_state_dicts(types.SimpleNamespace(**parts)).items():
            if state:
                torch.save(state, folder / name)

    reference_unet = UNet2DConditionModel(**config["unet"])
    perturb_norms(reference_unet, generator)
    save_moore_file(reference_unet=reference_unet)
    # A complete SD UNet folder (Moore's from_pretrained_2d reads its weights before the .pth files).
    reference_unet.save_pretrained(folder / "stable-diffusion-v1-5" / "unet", safe_serialization=True)
    del reference_unet

    denoising_unet = build_denoising_unet(config["unet"], config["motion"])
    perturb_norms(denoising_unet, generator)
    save_moore_file(denoising_unet=denoising_unet)  # denoising_unet.pth and motion_module.pth
    del denoising_unet

    pose_guider = PoseGuider(**config["pose_guider"])
    # A zero conv_out (the trained model's initialisation) would hide the pose in a random model.
    torch.nn.init.normal_(pose_guider.conv_out.weight, std=0.02)
    perturb_norms(pose_guider, generator)
    save_moore_file(pose_guider=pose_guider)

    vae = AutoencoderKL(**config["vae"])
    perturb_norms(vae, generator)
    vae.save_pretrained(folder / "sd-vae-ft-mse", safe_serialization=True)
    del vae
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image_encoder"]))
    perturb_norms(image_encoder, generator)
    image_encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    (folder / "side_by_side.json").write_text(json.dumps(
        {"model": model, "seed": seed, "writer": WRITER,
         "pose_guider_channels": config["pose_guider"]["block_out_channels"]}, indent=1))


def capabilities() -> dict:
    from animate_backend.pipeline import AnimateAnyonePipeline

    parameters = inspect.signature(AnimateAnyonePipeline.__call__).parameters
    return {"context_schedule": "context_schedule" in parameters}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def clock(device) -> tuple[float, float]:
    """(wall, process CPU) seconds, after the device has finished its queued work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def run(job_folder: Path) -> None:
    import torch

    from animate_backend.pipeline import AnimateAnyonePipeline

    job = json.loads((job_folder / "job.json").read_text())
    inputs = np.load(job_folder / "inputs.npz")
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = torch.device(job.get("device", "cpu"))
    dtype = getattr(torch, DTYPES[job.get("precision", "fp32")])

    loaded = time.perf_counter()
    pipe = AnimateAnyonePipeline.from_pretrained(job["converted"], dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    if job.get("speed"):
        pipe.enable_speed(*job["speed"])
    loaded = time.perf_counter() - loaded
    record: dict = {}

    # Final latents and the decode time: wrap this pipeline's decode_video.
    decode_video = pipe.decode_video

    def timed_decode(latents, *args, **kwargs):
        record["latents"] = latents.detach().float().cpu().numpy().copy()
        record["decode_start"] = clock(device)
        if flop_count.active() is not None:
            record["decode_start_gflop"] = flop_count.active().gflop()
        try:
            return decode_video(latents, *args, **kwargs)
        finally:
            record["decode_end"] = clock(device)

    pipe.decode_video = timed_decode
    clip = []
    pipe.image_encoder.register_forward_hook(
        lambda module, args, output: clip.append(output.image_embeds.detach().clone()))

    kwargs = dict(
        height=job["height"], width=job["width"], num_inference_steps=job["steps"], guidance_scale=job["guidance"],
        latents=torch.from_numpy(inputs["latents"]), context_frames=job["context_frames"],
        context_overlap=job["context_overlap"], output_type="np",
    )
    if job.get("context_schedule"):
        kwargs["context_schedule"] = job["context_schedule"]
    skeletons = list(inputs["skeletons"])  # arrays: the same pose pixels Moore gets
    for _ in range(int(job.get("warmup", 0))):  # untimed (GPU kernels, allocator)
        pipe(inputs["reference"], skeletons, **kwargs)
    clip.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_loaded, peak_loaded = rss_mib(), peak_rss_mib()
    start = clock(device)
    video = pipe(inputs["reference"], skeletons, **kwargs).frames[0]
    end = clock(device)

    result = {
        "side": "ours",
        "load_seconds": loaded,
        "wall": end[0] - start[0],
        "cpu": end[1] - start[1],
        "denoise_wall": record["decode_start"][0] - start[0],
        "denoise_cpu": record["decode_start"][1] - start[1],
        "decode_wall": record["decode_end"][0] - record["decode_start"][0],
        "decode_cpu": record["decode_end"][1] - record["decode_start"][1],
        "rss_loaded_mib": rss_loaded,
        "peak_before_call_mib": peak_loaded,
        "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "weights_dtype": str(pipe.denoising_unet.dtype),
        "speed": job.get("speed", []),
    }
    if job.get("count_flops"):  # one more, untimed call: counting slows it several-fold
        with flop_count.FlopCount() as count:
            pipe(inputs["reference"], skeletons, **kwargs)
        result["gflop"] = count.gflop()
        result["decode_gflop"] = count.gflop() - record["decode_start_gflop"]
        result["gflop_by_operator"] = count.by_operator()
    (job_folder / "result.json").write_text(json.dumps(result, indent=1))
    np.savez(job_folder / "result.npz", latents=record["latents"], video=np.asarray(video, dtype=np.float32),
             clip=clip[0].float().cpu().numpy())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write-weights")
    write.add_argument("folder", type=Path)
    write.add_argument("--model", choices=MODELS, required=True)
    write.add_argument("--seed", type=int, default=0)
    sub.add_parser("capabilities")
    run_parser = sub.add_parser("run")
    run_parser.add_argument("job", type=Path)
    args = parser.parse_args(argv)
    if args.command == "write-weights":
        write_weights(args.folder, args.model, args.seed)
    elif args.command == "capabilities":
        print(json.dumps(capabilities()))
    else:
        run(args.job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
