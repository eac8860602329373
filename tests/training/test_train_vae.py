"""Stage 0, the VAE from scratch: it learns, resumes exactly, and half-written checkpoints are skipped."""

import json
import shutil

import torch
from safetensors.torch import load_file

from animate_backend.train.__main__ import main as train_main
from animate_backend.train.config import VaeSettings
from animate_backend.train.checkpoints import CHECKPOINT_COMPLETE, list_checkpoints, resolve_checkpoint
from animate_backend.train.vae import new_vae, vae_loss

from training_clips import CONFIG_DIR, make_clip, write_json_manifest

VAE_CONFIG = str(CONFIG_DIR / "train_tiny_vae.yaml")


def vae_weights(output_dir):
    return load_file(output_dir / "vae" / "diffusion_pytorch_model.safetensors")


def test_vae_loss_is_zero_only_for_a_perfect_reconstruction():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    zeros = torch.zeros(2, 4, 8, 8)
    perfect, parts = vae_loss(images, images, zeros, zeros, VaeSettings())
    assert abs(float(perfect)) < 1e-5 and parts["ssim"] > 0.9999 and parts["kl"] == 0.0
    worse, _ = vae_loss(images.flip(-1), images, zeros, zeros, VaeSettings())
    assert float(worse) > 0.3


def test_vae_stage_trains_resumes_exactly_and_skips_a_half_written_checkpoint(tmp_path):
    manifest = write_json_manifest(tmp_path / "m.json", [make_clip(tmp_path / f"c{i}", frames=5) for i in range(2)])
    common = ["--config", VAE_CONFIG, "--set", f"data.manifest={manifest}", "--set", "checkpointing_steps=2",
              "--set", "checkpoints_total_limit=1"]
    whole = tmp_path / "whole"
    assert train_main(["vae", *common, "--set", f"output_dir={whole}", "--set", "optim.max_train_steps=4"]) == 0

    parts = tmp_path / "parts"
    assert train_main(["stage0", *common, "--set", f"output_dir={parts}", "--set", "optim.max_train_steps=2"]) == 0
    assert [p.name for p in list_checkpoints(parts)] == ["checkpoint-2"]
    assert (parts / "checkpoints" / "checkpoint-2" / CHECKPOINT_COMPLETE).is_file()
    # A run stopped while writing checkpoint 3: an in-place folder without the marker, and a
    # .partial folder. Neither may be resumed from.
    broken = parts / "checkpoints" / "checkpoint-3"
    shutil.copytree(parts / "checkpoints" / "checkpoint-2", broken)
    (broken / CHECKPOINT_COMPLETE).unlink()
    (broken / "model.safetensors").write_bytes(b"half a file")
    (parts / "checkpoints" / "checkpoint-4.partial").mkdir()
    assert resolve_checkpoint("latest", parts).name == "checkpoint-2"

    assert train_main(["vae", *common, "--set", f"output_dir={parts}", "--set", "optim.max_train_steps=4",
                       "--resume", "latest"]) == 0
    assert [p.name for p in list_checkpoints(parts)] == ["checkpoint-4"]

    a, b = vae_weights(whole), vae_weights(parts)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # It trained: weights moved from their initialisation, and the scaling factor was measured.
    initial = new_vae("tiny", seed=0).state_dict()
    assert sum(not torch.equal(initial[k], a[k]) for k in a) > len(a) // 2
    config = json.loads((whole / "vae" / "config.json").read_text())
    assert config["scaling_factor"] != 0.18215 and config["scaling_factor"] > 0


def test_stage1_from_a_size_with_the_trained_vae(tmp_path):
    manifest = write_json_manifest(tmp_path / "m.json", [make_clip(tmp_path / f"c{i}", frames=6) for i in range(2)])
    assert train_main(["vae", "--config", VAE_CONFIG, "--set", f"data.manifest={manifest}",
                       "--set", f"output_dir={tmp_path / 'vae'}", "--set", "optim.max_train_steps=1"]) == 0
    vae_folder = tmp_path / "vae" / "vae"
    stage1 = ["stage1", "--config", str(CONFIG_DIR / "train_tiny_stage1.yaml"), "--set", f"data.manifest={manifest}",
              "--set", "model.tiny=false", "--set", "report_to=none", "--set", "optim.max_train_steps=1"]
    assert train_main([*stage1, "--set", "model.size=tiny", "--set", f"model.vae={vae_folder}",
                       "--set", f"output_dir={tmp_path / 's1'}"]) == 0
    saved = load_file(tmp_path / "s1" / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors")
    trained = vae_weights(tmp_path / "vae")
    assert all(torch.equal(saved[k], trained[k]) for k in trained)  # the VAE is frozen in stage 1
    # A VAE whose latents do not fit the size's UNet is refused with the reason.
    assert train_main([*stage1, "--set", "model.size=demo", "--set", f"model.vae={vae_folder}",
                       "--set", f"output_dir={tmp_path / 's1b'}"]) == 2
