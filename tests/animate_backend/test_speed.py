"""Speed settings (`pipe.enable_speed`) and precisions compute the plain float32 path's video.

Each comparison runs the tiny random model at 128x128 (at 64x64 its lowest UNet level is one
latent pixel, where GroupNorm amplifies float32 rounding) with guidance, two steps, and
compares against a plain float32 pipeline made from the same seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animate_backend.models.speed import SPEED_SETTINGS, has_cpp_compiler, uses_channels_last
from animate_backend.tiny import make_tiny_pipeline

SIZE = 128
# float32 tolerances: relative L2 of the final latents, largest difference of the video in [0, 1].
FP32_LATENTS = 1e-4
FP32_VIDEO = 1e-4
# bf16 weights and activations keep about 3 significant digits.
BF16_LATENTS = 0.1


def moving_bar(count: int) -> list[np.ndarray]:
    """A bar moving across a black frame and a fixed crossbar."""
    frames = []
    for i in range(count):
        frame = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        x = 16 + 12 * i
        frame[20:108, x : x + 8] = (255, 85, 0)
        frame[40:48, 32:96] = (0, 255, 85)
        frames.append(frame)
    return frames


def run(pipe, reference_image, output_type):
    latents = torch.randn((1, 4, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(0))
    return pipe(
        reference_image, moving_bar(4), height=SIZE, width=SIZE, num_inference_steps=2, guidance_scale=3.5,
        latents=latents, output_type=output_type,
    ).frames


def relative_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference).norm() / reference.norm()).item()


@pytest.fixture(scope="module")
def plain_outputs(reference_image):
    pipe = make_tiny_pipeline(seed=0)
    return run(pipe, reference_image, "latent"), run(pipe, reference_image, "np")


def test_channels_last_gives_the_plain_video(reference_image, plain_outputs):
    pipe = make_tiny_pipeline(seed=0).enable_speed("channels_last")
    assert uses_channels_last(pipe)
    latents, video = run(pipe, reference_image, "latent"), run(pipe, reference_image, "np")
    plain_latents, plain_video = plain_outputs
    assert relative_l2(latents, plain_latents) < FP32_LATENTS
    assert np.abs(video - plain_video).max() < FP32_VIDEO


def test_channels_last_leaves_weights_and_saving_alone(tmp_path):
    from animate_backend.pipeline import AnimateAnyonePipeline

    plain = make_tiny_pipeline(seed=0)
    fast = make_tiny_pipeline(seed=0).enable_speed("channels_last")
    for name in ("denoising_unet", "reference_unet", "pose_guider", "vae"):
        plain_state, fast_state = getattr(plain, name).state_dict(), getattr(fast, name).state_dict()
        assert plain_state.keys() == fast_state.keys()
        assert all(torch.equal(plain_state[key], fast_state[key]) for key in plain_state)
    fast.save_pretrained(tmp_path / "saved")
    loaded = AnimateAnyonePipeline.from_pretrained(tmp_path / "saved")
    loaded_state = loaded.denoising_unet.state_dict()
    assert all(torch.equal(value, loaded_state[key]) for key, value in plain.denoising_unet.state_dict().items())


def test_every_speed_setting_can_be_enabled_twice():
    settings = SPEED_SETTINGS if has_cpp_compiler() else ("channels_last",)
    pipe = make_tiny_pipeline(seed=0)
    pipe.enable_speed(*settings).enable_speed(*settings)
    assert uses_channels_last(pipe)


def test_compile_without_a_cpp_compiler_says_what_to_do(monkeypatch):
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match='needs a C\\+\\+ compiler .* choose speed "auto"'):
        make_tiny_pipeline(seed=0).enable_speed("compile")


def test_an_unknown_speed_setting_names_the_known_ones():
    with pytest.raises(ValueError, match="channels_last"):
        make_tiny_pipeline(seed=0).enable_speed("warp_drive")


def test_bf16_on_the_cpu_stays_near_float32(reference_image, plain_outputs):
    """bf16 runs on any CPU (slowly without native bf16 arithmetic: docs/performance.md)."""
    pipe = make_tiny_pipeline(seed=0).to(dtype=torch.bfloat16)
    latents = run(pipe, reference_image, "latent")
    assert latents.dtype == torch.float32
    assert relative_l2(latents, plain_outputs[0]) < BF16_LATENTS


@pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_transformer_blocks_compute_what_the_plain_ones_do():
    """Regional torch.compile, on one motion module (compiling the whole tiny UNet takes minutes
    on a small machine; every block is compiled the same way)."""
    from animate_backend.models.speed import compile_transformer_blocks

    module = make_tiny_pipeline(seed=0).denoising_unet.down_blocks[0].motion_modules[0]
    hidden = torch.randn((2 * 4, module.proj_in.in_features, 8, 8),
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = module(hidden, num_frames=4)
        assert compile_transformer_blocks(module) == 1
        compiled = module(hidden, num_frames=4)
    assert relative_l2(compiled, plain) < FP32_LATENTS


def test_a_jobs_speed_choice_reaches_the_loaded_model():
    """job.json's `speed` (pose_bridge.settings): "auto" is channels-last on the CPU, "plain" is
    not; the cache keeps them apart, since a speed setting changes the loaded model in place."""
    from animate_backend.models.speed import speed_settings_for
    from animate_backend.pipeline_cache import PipelineCache
    from pose_bridge.settings import SPEEDS

    assert speed_settings_for("auto", "cpu") == ("channels_last",)
    assert speed_settings_for("auto", "cuda") == () and speed_settings_for("plain", "cpu") == ()
    assert set(SPEEDS) == {"auto", "plain", *SPEED_SETTINGS}  # every choice is one the backend has

    cache = PipelineCache(max_loaded=2)
    auto = cache.get("tiny", "cpu", "fp32", speed="auto")
    plain = cache.get("tiny", "cpu", "fp32", speed="plain")
    assert auto is not plain and len(cache) == 2
    assert uses_channels_last(auto.pipe) and not uses_channels_last(plain.pipe)
    assert cache.get("tiny", "cpu", "fp32", speed="auto") is auto
