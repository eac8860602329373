"""Moore's side of `moore_side_by_side.py`: Moore-AnimateAnyone's released pipeline on the same inputs.

Runs with Moore's Python environment and imports Moore's code from the checkout given on the
command line (nothing of Moore's is copied here, and nothing of ours is imported):

    MOORE_PYTHON benchmarks/side_by_side_moore.py MOORE_CHECKOUT JOB_FOLDER

It builds the models the way Moore's `scripts/pose2vid.py` does (UNet3DConditionModel.
from_pretrained_2d with `configs/inference/inference_v2.yaml`'s unet_additional_kwargs, the
four .pth files, DDIM with that file's noise_scheduler_kwargs), in float32 on the CPU, and calls
Pose2VideoPipeline with the job's reference, skeletons and settings. Two instance attributes of
the pipeline are replaced, nothing else: `prepare_latents` returns the job's initial latents
(Moore's __call__ takes none), and `decode_latents` is wrapped to keep the final latents and
time the decoding. Writes `result.json` and `result.npz` like our side.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

import flop_count  # a sibling of this script


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clock(device) -> tuple[float, float]:
    """(wall, process CPU) seconds, after the device has finished its queued work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def build_pipeline(moore: Path, weights: Path, device: str = "cpu", dtype=None):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from omegaconf import OmegaConf
    from transformers import CLIPVisionModelWithProjection

    from src.models.pose_guider import PoseGuider
    from src.models.unet_2d_condition import UNet2DConditionModel
    from src.models.unet_3d import UNet3DConditionModel
    from src.pipelines.pipeline_pose2vid_long import Pose2VideoPipeline

    infer_config = OmegaConf.load(moore / "configs" / "inference" / "inference_v2.yaml")
    base = weights / "stable-diffusion-v1-5"
    vae = AutoencoderKL.from_pretrained(weights / "sd-vae-ft-mse")
    reference_unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    denoising_unet = UNet3DConditionModel.from_pretrained_2d(
        base, weights / "motion_module.pth", subfolder="unet",
        unet_additional_kwargs=infer_config.unet_additional_kwargs,
    )
    info = json.loads((weights / "side_by_side.json").read_text())
    unet_channels = json.loads((base / "unet" / "config.json").read_text())["block_out_channels"]
    pose_guider = PoseGuider(unet_channels[0], block_out_channels=tuple(info["pose_guider_channels"]))
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(weights / "image_encoder")
    scheduler = DDIMScheduler(**OmegaConf.to_container(infer_config.noise_scheduler_kwargs))

    # Moore's script loads denoising_unet.pth with strict=False (the motion modules come from
    # motion_module.pth). Check here that the two files together set every weight, so that no
    # weight is left at the base folder's values.
    denoising_state = torch.load(weights / "denoising_unet.pth", map_location="cpu", weights_only=True)
    motion_state = torch.load(weights / "motion_module.pth", map_location="cpu", weights_only=True)
    missing, unexpected = denoising_unet.load_state_dict(denoising_state, strict=False)
    not_set = sorted(set(missing) - set(motion_state))
    if not_set or unexpected:
        raise SystemExit(f"Moore's denoising UNet does not match the files: not set {not_set[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")
    reference_unet.load_state_dict(torch.load(weights / "reference_unet.pth", map_location="cpu", weights_only=True))
    pose_guider.load_state_dict(torch.load(weights / "pose_guider.pth", map_location="cpu", weights_only=True))

    pipe = Pose2VideoPipeline(
        vae=vae, image_encoder=image_encoder, reference_unet=reference_unet,
        denoising_unet=denoising_unet, pose_guider=pose_guider, scheduler=scheduler,
    )
    return pipe.to(device, dtype=dtype or torch.float32)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: MOORE_PYTHON side_by_side_moore.py MOORE_CHECKOUT JOB_FOLDER")
    moore, job_folder = Path(argv[0]).resolve(), Path(argv[1])
    sys.path.insert(0, str(moore))
    import torch
    from PIL import Image

    job = json.loads((job_folder / "job.json").read_text())
    inputs = np.load(job_folder / "inputs.npz")
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = torch.device(job.get("device", "cpu"))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[job.get("precision", "fp32")]

    loaded = time.perf_counter()
    pipe = build_pipeline(moore, Path(job["weights"]), device, dtype)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter() - loaded
    record: dict = {}

    initial = torch.from_numpy(inputs["latents"])

    def prepare_latents(batch_size, num_channels_latents, width, height, video_length, dtype, device,
                        generator, latents=None):
        expected = (batch_size, num_channels_latents, video_length, height // pipe.vae_scale_factor,
                    width // pipe.vae_scale_factor)
        if tuple(initial.shape) != expected:
            raise SystemExit(f"initial latents have shape {tuple(initial.shape)}, Moore expects {expected}")
        return initial.to(device=device, dtype=dtype) * pipe.scheduler.init_noise_sigma

    decode_latents = pipe.decode_latents

    def timed_decode(latents):
        record["latents"] = latents.detach().float().cpu().numpy().copy()
        record["decode_start"] = clock(device)
        if flop_count.active() is not None:
            record["decode_start_gflop"] = flop_count.active().gflop()
        try:
            return decode_latents(latents)
        finally:
            record["decode_end"] = clock(device)

    pipe.prepare_latents = prepare_latents
    pipe.decode_latents = timed_decode
    clip = []
    pipe.image_encoder.register_forward_hook(
        lambda module, args, output: clip.append(output.image_embeds.detach().clone()))

    reference = Image.fromarray(inputs["reference"])
    poses = [Image.fromarray(frame) for frame in inputs["skeletons"]]

    def call():
        return pipe(
            reference, poses, job["width"], job["height"], len(poses), job["steps"], job["guidance"],
            context_frames=job["context_frames"], context_overlap=job["context_overlap"],
        ).videos  # (1, 3, F, H, W) in [0, 1]

    for _ in range(int(job.get("warmup", 0))):  # untimed (GPU kernels, allocator)
        call()
    clip.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_loaded, peak_loaded = rss_mib(), peak_rss_mib()
    start = clock(device)
    video = call()
    end = clock(device)

    result = {
        "side": "moore",
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
    }
    if job.get("count_flops"):  # one more, untimed call: counting slows it several-fold
        with flop_count.FlopCount() as count:
            call()
        result["gflop"] = count.gflop()
        result["decode_gflop"] = count.gflop() - record["decode_start_gflop"]
        result["gflop_by_operator"] = count.by_operator()
    (job_folder / "result.json").write_text(json.dumps(result, indent=1))
    frames = np.asarray(video[0].permute(1, 2, 3, 0).float().cpu().numpy(), dtype=np.float32)  # (F, H, W, 3)
    np.savez(job_folder / "result.npz", latents=record["latents"], video=frames, clip=clip[0].float().cpu().numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main())
