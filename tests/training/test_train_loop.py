"""Both training stages on the tiny model: learning, what trains, exact resume, the saved folder."""

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import default_collate

from animate_backend.train.__main__ import main as train_main
from animate_backend.train.config import load_config
from animate_backend.train.data import AnimateAnyoneDataset
from animate_backend.train.modules import AnimateAnyoneTrainingModule
from animate_backend.train.checkpoints import list_checkpoints
from animate_backend.train.loop import micro_step_generator
from animate_backend.train.models import build_stage_models, set_trainable
from animate_backend.train.trainer import train, training_loss

from training_clips import CONFIG_DIR, make_clip, write_json_manifest

COMPONENTS = ("vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider")


def tiny_config(stage: int, manifest: Path, output_dir: Path, **overrides):
    values = {"data.manifest": str(manifest), "output_dir": str(output_dir), "report_to": "none"}
    values.update(overrides)
    return load_config(CONFIG_DIR / f"train_tiny_stage{stage}.yaml", values)


def folder_weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    weights = {}
    for component in COMPONENTS:
        files = list((folder / component).glob("*.safetensors"))
        assert len(files) == 1, f"{component}: {files}"
        weights[component] = load_file(files[0])
    return weights


def fixed_batch_learning(stage: int, manifest: Path, tmp_path: Path, steps: int):
    """Train on one repeated batch; the loss on fixed noise and timesteps before and after."""
    config = tiny_config(stage, manifest, tmp_path, **{"optim.uncond_probability": 0.0})
    models = build_stage_models(config)
    params = set_trainable(models, stage)
    module = AnimateAnyoneTrainingModule(models.reference_unet, models.denoising_unet, models.pose_guider)
    d = config.data
    dataset = AnimateAnyoneDataset(manifest, stage=stage, width=d.width, height=d.height, crop="center",
                                   min_reference_distance=d.min_reference_distance, clip_frames=d.clip_frames,
                                   clip_stride=d.clip_stride, clip_processor=models.feature_extractor)
    batch = default_collate([dataset[0], dataset[1]])

    def evaluation_loss() -> float:
        with torch.no_grad():
            total = sum(float(training_loss(batch, module, models, config, micro_step_generator(99, 0, k),
                                            torch.float32)) for k in range(3))
        module.bank.clear()
        return total / 3

    frozen_before = {k: v.clone() for k, v in models.vae.state_dict().items()}
    before = evaluation_loss()
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    for step in range(steps):
        loss = training_loss(batch, module, models, config, micro_step_generator(0, 0, step), torch.float32)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        module.bank.clear()
    after = evaluation_loss()
    for key, value in models.vae.state_dict().items():
        torch.testing.assert_close(value, frozen_before[key], rtol=0, atol=0)
    return before, after, models


def test_stage1_loss_goes_down_on_a_repeated_batch(tiny_dataset, tmp_path):
    before, after, models = fixed_batch_learning(1, tiny_dataset, tmp_path, steps=12)
    assert after < 0.7 * before, (before, after)
    # Stage 1 trains a 2D denoising UNet: no motion modules at all.
    assert not any("motion_modules" in name for name, _ in models.denoising_unet.named_parameters())


def test_stage2_loss_goes_down_on_a_repeated_batch(tiny_dataset, tmp_path):
    before, after, _ = fixed_batch_learning(2, tiny_dataset, tmp_path, steps=12)
    assert after < 0.8 * before, (before, after)


def test_stage1_then_stage2_trains_only_motion_modules_and_the_folder_generates(tiny_dataset, tmp_path):
    from animate_backend.loading import load_pipeline

    stage1 = train(tiny_config(1, tiny_dataset, tmp_path / "s1", **{"optim.max_train_steps": 3,
                                                                     "report_to": "tensorboard"}))
    assert stage1 == tmp_path / "s1" / "pipeline"
    assert list((tmp_path / "s1" / "logs").rglob("events.out.tfevents.*")), "no TensorBoard log written"
    stage2 = train(tiny_config(2, tiny_dataset, tmp_path / "s2", **{
        "model.tiny": False, "model.pretrained_pipeline": str(stage1), "optim.max_train_steps": 3,
        "validation.every_steps": 3}))
    before, after = folder_weights(stage1), folder_weights(stage2)
    changed_motion = 0
    for component in COMPONENTS:
        assert before[component].keys() == after[component].keys()
        for key, value in before[component].items():
            if component == "denoising_unet" and "motion_modules" in key:
                changed_motion += not torch.equal(value, after[component][key])
            else:
                assert torch.equal(value, after[component][key]), f"{component}.{key} changed in stage 2"
    assert changed_motion > 50
    # Stage 1 wrote zero-output motion modules: a complete pipeline that is still per-frame.
    assert all(not v.any() for k, v in before["denoising_unet"].items() if "motion_modules" in k and "proj_out" in k)
    # Validation clips with the real pipeline.
    assert (tmp_path / "s2" / "validation" / "step-000003.mp4").is_file()
    assert (tmp_path / "s2" / "validation" / "step-000003.png").is_file()

    loaded = load_pipeline(str(stage2), device="cpu", precision="fp32")
    assert not loaded.untrained
    dataset = AnimateAnyoneDataset(tiny_dataset, stage=2, width=64, height=64, clip_frames=4, clip_stride=1,
                                   min_reference_distance=0, crop="center")
    clip = dataset.clips[0]
    from animate_backend.train.data import crop_pose
    from pose_bridge.keypoints import PoseSequence

    plan = dataset.plan(0)
    poses = PoseSequence([crop_pose(clip.poses[i], plan.crop_box, (64, 64)) for i in plan.frame_indices])
    reference = ((dataset.load(plan)["reference_pixel_values"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    output = loaded.pipe(reference, poses, height=64, width=64, num_inference_steps=2, output_type="np",
                         generator=torch.Generator().manual_seed(0))
    frames = output.frames
    assert frames.shape == (1, 4, 64, 64, 3)
    assert frames.std() > 0.01 and not torch.isnan(torch.as_tensor(frames)).any()


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    # Runs on one thread (conftest): multi-threaded CPU reductions differ in their last bits
    # from run to run, and Adam turns such noise in near-zero gradients (attn2's keys see a
    # single context token) into visible differences. One thread repeats bit for bit, so
    # the comparison is exact.
    # Five clips, batch 1, accumulation 2: optimizer steps end mid-epoch, so resuming must
    # skip the batches already seen; EMA and the lr schedule are in the checkpoint too.
    manifest = write_json_manifest(tmp_path / "m.json", [make_clip(tmp_path / f"c{i}", frames=8) for i in range(5)])
    common = ["--set", f"data.manifest={manifest}", "--set", "report_to=none",
              "--set", "optim.train_batch_size=1", "--set", "optim.gradient_accumulation_steps=2",
              "--set", "optim.use_ema=true", "--set", "optim.ema_decay=0.5",
              "--set", "checkpointing_steps=2", "--set", "checkpoints_total_limit=1"]
    config = str(CONFIG_DIR / "train_tiny_stage1.yaml")
    whole = tmp_path / "whole"
    assert train_main(["stage1", "--config", config, *common, "--set", f"output_dir={whole}",
                       "--set", "optim.max_train_steps=4"]) == 0
    parts = tmp_path / "parts"
    assert train_main(["stage1", "--config", config, *common, "--set", f"output_dir={parts}",
                       "--set", "optim.max_train_steps=2"]) == 0
    assert [p.name for p in list_checkpoints(parts)] == ["checkpoint-2"]
    assert train_main(["stage1", "--config", config, *common, "--set", f"output_dir={parts}",
                       "--set", "optim.max_train_steps=4", "--resume", "latest"]) == 0
    assert [p.name for p in list_checkpoints(parts)] == ["checkpoint-4"]  # only the newest kept
    a, b = folder_weights(whole / "pipeline"), folder_weights(parts / "pipeline")
    for component in COMPONENTS:
        for key in a[component]:
            assert torch.equal(a[component][key], b[component][key]), f"{component}.{key} differs"
