"""Validation clips during training: the real pipeline from the current (EMA) weights renders a
clip into validation/step-N.mp4 (and its first frame as a PNG, and to TensorBoard)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from animate_backend.train.config import TrainConfig
from animate_backend.train.data import AnimateAnyoneDataset, crop_box_for, crop_image, crop_pose
from animate_backend.train.models import StageModels, export_pipeline
from pose_bridge.image_io import read_image, write_png, write_video
from pose_bridge.keypoints import PoseSequence
from pose_bridge.openpose_json import load_poses

logger = logging.getLogger(__name__)

VALIDATION_DIR = "validation"


def _validation_inputs(config: TrainConfig, dataset: AnimateAnyoneDataset):
    """(reference image uint8, PoseSequence at the training size) for validation clips."""
    v = config.validation
    width, height = config.data.width, config.data.height
    if v.reference_image and v.poses:
        reference = read_image(v.reference_image)
        poses = load_poses(v.poses).fitted(width, height)
        frames = poses.frames[: v.num_frames]
        return reference, PoseSequence(frames, poses.fps)
    # The first clip of the dataset, centre-cropped: its reference and its next frames' poses.
    clip = dataset.clips[0]
    plan = dataset.plan(0)
    box = crop_box_for(clip.frame_size, (width, height), "center", np.random.default_rng(0))
    reference = crop_image(dataset.read_frames(clip, [plan.reference_index])[plan.reference_index], box,
                           (width, height))
    count = min(v.num_frames, clip.num_frames)
    poses = []
    for i in range(count):
        pose = clip.poses[i]
        if pose.size != clip.frame_size:
            pose = pose.resized(*clip.frame_size)
        poses.append(crop_pose(pose, box, (width, height)))
    return reference, PoseSequence(poses, clip.poses.fps)


def run_validation(models: StageModels, config: TrainConfig, dataset: AnimateAnyoneDataset, step: int,
                   accelerator, ema=None, params=None) -> Path:
    """Render a clip with the real pipeline from the current (EMA) weights; mp4 + first frame png."""
    v = config.validation
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        pipe = export_pipeline(models, config)
    finally:
        if ema is not None:
            ema.restore(params)
    pipe.to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)  # the training's own bar is on the terminal
    reference, poses = _validation_inputs(config, dataset)
    generator = torch.Generator(device="cpu").manual_seed(v.seed)
    output = pipe(
        reference_image=reference_to_pil(reference),
        poses=poses,
        height=config.data.height,
        width=config.data.width,
        num_frames=len(poses),
        num_inference_steps=v.num_inference_steps,
        guidance_scale=v.guidance_scale,
        generator=generator,
        output_type="np",
        draw_hands=config.data.draw_hands,
        draw_face=config.data.draw_face,
    )
    frames = _as_uint8_frames(output.frames)
    folder = Path(config.output_dir) / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"step-{step:06d}.mp4"
    write_video(video, iter(frames), fps=poses.fps)
    write_png(folder / f"step-{step:06d}.png", frames[0])
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack(frames[: min(8, len(frames))]), step, dataformats="NHWC")
    del pipe
    logger.info("validation clip written to %s", video)
    return video


def reference_to_pil(rgb: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(rgb)


def _as_uint8_frames(frames: np.ndarray) -> list[np.ndarray]:
    """The first video of an output_type="np" result, (B, F, H, W, 3) in [0, 1], as uint8 frames."""
    return list((np.clip(np.asarray(frames)[0], 0.0, 1.0) * 255.0).round().astype(np.uint8))
