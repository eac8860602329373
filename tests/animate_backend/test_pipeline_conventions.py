"""The diffusers conventions the pipeline follows: offloading, step callbacks, interrupt, VAE switches.

Offloading is tested on the CPU: diffusers refuses `enable_model_cpu_offload()` without an
accelerator unless the device is given, so the tests give device="cpu". The hooks then move
each model "to" the CPU when it runs: no memory is saved, but every hook, the execution
device and the freeing after the call are exercised as they are on a GPU.

Outputs of a changed pipeline are compared with a plain call's within 1e-5 (float32 on the CPU:
the same operations, so any difference is rounding, not another computation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animate_backend.errors import InputError
from animate_backend.tiny import make_tiny_pipeline

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def generate(pipe, reference, poses, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    kwargs.setdefault("height", 64)
    kwargs.setdefault("width", 64)
    kwargs.setdefault("output_type", "np")
    return pipe(reference, poses, **kwargs).frames


@pytest.fixture
def fresh_pipe():
    """A pipeline of its own: these tests change its hooks and switches."""
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hooked_components(pipe) -> set[str]:
    return {name for name, model in pipe.components.items() if hasattr(model, "_hf_hook")}


def test_model_cpu_offload_runs_a_call_and_gives_the_same_video(fresh_pipe, reference_image, skeletons):
    poses = skeletons(3)
    plain = generate(fresh_pipe, reference_image, poses)

    fresh_pipe.enable_model_cpu_offload(device="cpu")
    assert hooked_components(fresh_pipe) == {"vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider"}
    assert fresh_pipe._execution_device == torch.device("cpu", 0)
    offloaded = generate(fresh_pipe, reference_image, poses)

    np.testing.assert_allclose(offloaded, plain, **TOLERANCE)
    # maybe_free_model_hooks ran: the hooks are in place again for the next call, and it works too.
    assert hooked_components(fresh_pipe) == {"vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider"}
    np.testing.assert_allclose(generate(fresh_pipe, reference_image, poses), plain, **TOLERANCE)


def test_sequential_offload_hooks_run_a_call_and_give_the_same_video(fresh_pipe, reference_image, skeletons):
    """The hooks of enable_sequential_cpu_offload (weights on the meta device, each layer's
    loaded only for its own forward) put on every component as that method does.

    The method itself cannot run on the CPU: it names the device "cpu:0", and accelerate 1.15
    with torch 2.13 fails (a TypeError) moving a weight back from "cpu:0" to meta, for any
    diffusers model. With device "cpu" the same hooks work; on a GPU the method is tested below.
    """
    from accelerate import cpu_offload

    poses = skeletons(2)
    plain = generate(fresh_pipe, reference_image, poses, num_inference_steps=1)
    for model in fresh_pipe.components.values():
        if isinstance(model, torch.nn.Module):
            cpu_offload(model, torch.device("cpu"), offload_buffers=len(model._parameters) > 0)
    assert fresh_pipe.denoising_unet.conv_in.weight.device.type == "meta"
    offloaded = generate(fresh_pipe, reference_image, poses, num_inference_steps=1)
    np.testing.assert_allclose(offloaded, plain, **TOLERANCE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading to a GPU needs a GPU")
@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_offloading_to_a_gpu_gives_the_cpu_video(fresh_pipe, reference_image, skeletons, offload):
    poses = skeletons(3)
    plain = generate(fresh_pipe, reference_image, poses)
    getattr(fresh_pipe, offload)()
    offloaded = generate(fresh_pipe, reference_image, poses)
    # Another device's kernels round differently: a looser tolerance than on one device.
    np.testing.assert_allclose(offloaded, plain, rtol=0, atol=2e-3)
    assert fresh_pipe.denoising_unet.device.type in ("cpu", "meta"), "nothing stays on the GPU after the call"


def test_callback_on_step_end_sees_and_replaces_the_latents(tiny_pipe, reference_image, skeletons):
    seen: list[tuple[int, tuple[int, ...]]] = []

    def zero_latents(pipe, step, timestep, callback_kwargs):
        seen.append((step, tuple(callback_kwargs["latents"].shape)))
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    latents = generate(tiny_pipe, reference_image, skeletons(3), num_inference_steps=3, output_type="latent",
                       callback_on_step_end=zero_latents, callback_on_step_end_tensor_inputs=["latents"])
    assert seen == [(0, (1, 4, 3, 8, 8)), (1, (1, 4, 3, 8, 8)), (2, (1, 4, 3, 8, 8))]
    assert torch.count_nonzero(latents) == 0, "the latents the callback returned are the output"


def test_a_callback_may_only_ask_for_tensors_the_pipeline_offers(tiny_pipe, reference_image, skeletons):
    with pytest.raises(InputError, match="callback_on_step_end_tensor_inputs may only name"):
        generate(tiny_pipe, reference_image, skeletons(2), callback_on_step_end=lambda *args: {},
                 callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_interrupt_skips_the_remaining_steps_and_still_decodes(tiny_pipe, reference_image, skeletons):
    events: list[dict] = []

    def stop_after_first_step(pipe, step, timestep, callback_kwargs):
        pipe._interrupt = True
        return callback_kwargs

    frames = generate(tiny_pipe, reference_image, skeletons(3), num_inference_steps=4,
                      callback_on_step_end=stop_after_first_step, on_progress=events.append)
    denoised = [e for e in events if e["stage"] == "denoise"]
    assert [e["step"] for e in denoised] == [1], "one step ran, then the loop stopped"
    assert tiny_pipe.interrupt
    assert frames.shape == (1, 3, 64, 64, 3) and np.isfinite(frames).all()
    # The next call starts uninterrupted.
    generate(tiny_pipe, reference_image, skeletons(2), num_inference_steps=2, output_type="latent")
    assert not tiny_pipe.interrupt


def test_the_progress_bar_counts_every_window_of_every_step(tiny_pipe, reference_image, skeletons, capsys):
    tiny_pipe.set_progress_bar_config(disable=False, desc="denoising", ncols=80)
    try:
        # 6 frames in windows of 4 with overlap 2: two windows, three steps.
        generate(tiny_pipe, reference_image, skeletons(6), num_inference_steps=3, context_frames=4,
                 context_overlap=2, output_type="latent")
    finally:
        tiny_pipe.set_progress_bar_config(disable=True)
    assert "6/6" in capsys.readouterr().err


def test_vae_slicing_gives_the_same_video_and_tiling_runs(fresh_pipe, reference_image, skeletons):
    poses = skeletons(3)
    plain = generate(fresh_pipe, reference_image, poses, decode_chunk_size=3)
    fresh_pipe.enable_vae_slicing()
    assert fresh_pipe.vae.use_slicing
    np.testing.assert_allclose(generate(fresh_pipe, reference_image, poses, decode_chunk_size=3), plain, **TOLERANCE)
    fresh_pipe.disable_vae_slicing()

    # Tiles smaller than the frame, so that tiling really splits it (the tiny VAE's default
    # tile is as large as its sample size).
    fresh_pipe.enable_vae_tiling()
    fresh_pipe.vae.tile_sample_min_size = 32
    fresh_pipe.vae.tile_latent_min_size = 32 // fresh_pipe.vae_scale_factor
    tiled = generate(fresh_pipe, reference_image, poses)
    assert fresh_pipe.vae.use_tiling
    assert tiled.shape == plain.shape and np.isfinite(tiled).all() and 0 <= tiled.min() and tiled.max() <= 1
    fresh_pipe.disable_vae_tiling()
    np.testing.assert_allclose(generate(fresh_pipe, reference_image, poses), plain, **TOLERANCE)


@pytest.mark.parametrize("output_type", ["np", "pt", "pil"])
def test_every_output_type_goes_through_the_video_processor_to_the_same_frames(
    tiny_pipe, reference_image, skeletons, output_type
):
    streamed: list[np.ndarray] = []
    frames = generate(tiny_pipe, reference_image, skeletons(3), output_type=output_type,
                      on_frames=lambda first, chunk: streamed.append(chunk))
    if output_type == "pil":
        as_uint8 = np.stack([np.asarray(image) for image in frames[0]])
    else:
        array = frames[0].permute(0, 2, 3, 1).numpy() if output_type == "pt" else frames[0]
        assert array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1
        as_uint8 = (array * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(np.concatenate(streamed), as_uint8)
