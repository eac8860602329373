"""The pipeline: windows, shapes, determinism, streaming, memory, errors, cancel."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest
import torch

from animate_backend.context_windows import context_windows, coverage
from animate_backend.errors import CancelledError, InputError, OutOfMemoryError
from animate_backend.images import letterbox
from animate_backend.pose_features import POSE_GUIDER_CHUNK

STEPS = 2


def generate(pipe, reference, poses, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    kwargs.setdefault("height", 64)
    kwargs.setdefault("width", 64)
    return pipe(reference, poses, **kwargs)


# ----------------------------------------------------------------------------- windows


def test_windows_cover_every_frame_without_wrapping():
    windows = context_windows(50, 24, 4)
    assert [(w.frames[0], w.frames[-1]) for w in windows] == [(0, 23), (20, 43), (26, 49)]
    covered = sorted({f for w in windows for f in w.frames})
    assert covered == list(range(50))  # every frame, and nothing past the end (no wrap onto the start)
    assert all(list(w.frames) == list(range(w.frames[0], w.frames[0] + 24)) for w in windows)


def test_window_weights_taper_at_shared_edges_and_are_never_zero():
    windows = context_windows(50, 24, 4)
    first, middle, last = windows
    assert first.weights[0] == 1.0  # the video's own start is not tapered
    assert first.weights[-4:] == (0.8, 0.6, 0.4, 0.2)  # cross-fade into the next window
    assert middle.weights[:4] == (0.2, 0.4, 0.6, 0.8)
    assert last.weights[-1] == 1.0
    assert all(w > 0 for window in windows for w in window.weights)
    # Two windows cross-fade: their weights sum to one on every frame.
    torch.testing.assert_close(coverage(windows, 50), torch.ones(50))


def test_a_short_video_is_one_window_of_uniform_weight():
    for schedule in ("tapered", "loop"):
        (window,) = context_windows(10, 24, 4, schedule)
        assert window.frames == tuple(range(10)) and set(window.weights) == {1.0}
    with pytest.raises(ValueError, match="less than context_frames"):
        context_windows(10, 8, 8)
    with pytest.raises(ValueError, match="tapered, loop"):
        context_windows(10, 8, 2, "uniform")


def test_loop_windows_are_moores_closed_loop():
    windows = context_windows(8, 4, 2, "loop")
    assert [w.frames for w in windows] == [(0, 1, 2, 3), (2, 3, 4, 5), (4, 5, 6, 7), (6, 7, 0, 1)]
    assert {w for window in windows for w in window.weights} == {1.0}  # plain mean per frame
    torch.testing.assert_close(coverage(windows, 8), torch.full((8,), 2.0))
    # Windows start every stride frames while the start is inside the video: 30 frames, 24/4.
    assert [w.frames[0] for w in context_windows(30, 24, 4, "loop")] == [0, 20]
    assert context_windows(30, 24, 4, "loop")[1].frames[-1] == 13


# ----------------------------------------------------------------------------- generation


def test_shapes_through_every_component(tiny_pipe, reference_image, skeletons):
    from animate_backend.pose_features import draw_skeletons

    pipe, cpu = tiny_pipe, torch.device("cpu")
    pixels, clip_image = pipe.prepare_reference(reference_image, 48, 64)  # W 48, H 64; the image is 72x96
    assert pixels.shape == (1, 3, 64, 48) and -1 <= pixels.min() and pixels.max() <= 1
    assert clip_image.shape == (64, 64, 3)  # padded to a square, never cropped
    clip = pipe.encode_clip(clip_image, cpu)
    assert clip.shape == (1, 1, 32)  # one context token of the UNets' cross-attention width
    reference_latents = pipe.encode_reference_latents(pixels, cpu)
    assert reference_latents.shape == (1, 4, 8, 6)
    pipe.write_reference(reference_latents, clip)
    try:
        tokens = pipe.reference_bank.tokens
        assert len(tokens) == 16
        assert tokens["down_blocks.0.attentions.0.transformer_blocks.0.attn1"].shape == (1, 8 * 6, 32)
        assert tokens["mid_block.attentions.0.transformer_blocks.0.attn1"].shape == (1, 1, 64)
        drawn = draw_skeletons(skeletons(5), 48, 64)
        assert drawn.shape == (5, 64, 48, 3) and drawn.dtype == np.uint8
        assert pipe.pose_features(drawn, cpu).shape == (1, 32, 5, 8, 6)
        latents = torch.randn(1, 4, 5, 8, 6)
        noise = pipe.predict_noise(latents, torch.tensor(500), pipe.pose_features(drawn, cpu), clip, guidance_scale=3.5)
        assert noise.shape == (1, 4, 5, 8, 6) and noise.dtype == torch.float32
    finally:
        pipe.reference_bank.clear()
    frames = pipe.decode_video(latents, output_type="np", chunk_size=2)
    assert frames.shape == (1, 5, 64, 48, 3)


def test_generates_frames_of_the_asked_size_and_reports_progress(tiny_pipe, reference_image, skeletons):
    progress, chunks = [], []
    out = generate(
        tiny_pipe, reference_image, skeletons(8), output_type="np",
        on_progress=progress.append, on_frames=lambda first, frames: chunks.append((first, frames)),
        decode_chunk_size=3,
    )
    assert out.frames.shape == (1, 8, 64, 64, 3) and out.frames.dtype == np.float32
    assert 0.0 <= out.frames.min() and out.frames.max() <= 1.0
    assert [first for first, _ in chunks] == [0, 3, 6]
    streamed = np.concatenate([frames for _, frames in chunks])
    assert streamed.dtype == np.uint8 and streamed.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(streamed, np.round(out.frames[0] * 255).astype(np.uint8))
    stages = [p["stage"] for p in progress]
    assert stages[0] == "reference" and stages[-1] == "decode" and stages.count("denoise") == STEPS
    assert progress[-1]["frames_done"] == progress[-1]["frames_total"] == 8
    assert tiny_pipe.reference_bank.tokens == {}  # nothing of the clip is kept after the call


def test_output_types(tiny_pipe, reference_image, skeletons):
    poses = skeletons(3)
    pil = generate(tiny_pipe, reference_image, poses, output_type="pil", num_inference_steps=1).frames
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (64, 64)
    pt = generate(tiny_pipe, reference_image, poses, output_type="pt", num_inference_steps=1).frames
    assert pt.shape == (1, 3, 3, 64, 64)
    latent = generate(tiny_pipe, reference_image, poses, output_type="latent", num_inference_steps=1).frames
    assert latent.shape == (1, 4, 3, 8, 8) and latent.dtype == torch.float32
    streamed = []
    none = generate(tiny_pipe, reference_image, poses, output_type=None, num_inference_steps=1,
                    on_frames=lambda first, frames: streamed.append(frames))
    assert none.frames is None and sum(len(f) for f in streamed) == 3


def test_same_seed_same_video_other_seed_other_video(tiny_pipe, reference_image, skeletons):
    poses = skeletons(4)
    a = generate(tiny_pipe, reference_image, poses, output_type="latent").frames
    b = generate(tiny_pipe, reference_image, poses, output_type="latent").frames
    c = generate(tiny_pipe, reference_image, poses, output_type="latent",
                 generator=torch.Generator().manual_seed(1)).frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_the_pose_and_the_reference_change_the_video(tiny_pipe, reference_image, skeletons):
    base = generate(tiny_pipe, reference_image, skeletons(4), output_type="latent").frames
    other_pose = generate(tiny_pipe, reference_image, skeletons(4)[::-1], output_type="latent").frames
    other_reference = generate(tiny_pipe, 255 - reference_image, skeletons(4), output_type="latent").frames
    assert not torch.allclose(base, other_pose) and not torch.allclose(base, other_reference)


def test_reference_in_both_branches_is_a_different_guidance(tiny_pipe, reference_image, skeletons):
    poses = skeletons(4)
    standard = generate(tiny_pipe, reference_image, poses, output_type="latent").frames
    both = generate(tiny_pipe, reference_image, poses, output_type="latent", reference_in_uncond=True).frames
    assert not torch.allclose(standard, both, atol=1e-5)


def test_one_window_equals_plain_sampling_over_all_frames(tiny_pipe, reference_image, skeletons):
    """When every frame fits in one window, the windowed sampler is ordinary DDIM sampling."""
    from animate_backend.pose_features import draw_skeletons

    pipe, poses = tiny_pipe, skeletons(6)
    latents = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(3))
    windowed = generate(pipe, reference_image, poses, latents=latents, context_frames=16, output_type="latent").frames

    # The same sampling written out without windows.
    pixels, clip_image = pipe.prepare_reference(reference_image, 64, 64)
    clip = pipe.encode_clip(clip_image, torch.device("cpu"))
    pipe.write_reference(pipe.encode_reference_latents(pixels, torch.device("cpu")), clip)
    drawn = draw_skeletons(poses, 64, 64)
    pipe.scheduler.set_timesteps(STEPS)
    x = latents * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps:
        noise = pipe.predict_noise(x, t, pipe.pose_features(drawn, torch.device("cpu")), clip, guidance_scale=3.5)
        x = pipe.scheduler.step(noise, t, x).prev_sample
    pipe.reference_bank.clear()
    torch.testing.assert_close(windowed, x)


def test_reference_net_and_reference_projections_run_once_per_call(tiny_pipe, reference_image, skeletons):
    """Two steps x three windows, yet one ReferenceNet pass, one K/V projection of the reference,
    and one Pose Guider pass per frame."""
    reference_passes, reference_projections, own_projections, posed_frames = [], [], [], []
    layer = tiny_pipe.denoising_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1

    def count_projection(module, inputs, output):
        # The reference tokens come as one row; the frames' own tokens as 2 x window rows (CFG).
        (reference_projections if inputs[0].shape[0] == 1 else own_projections).append(inputs[0].shape)

    hooks = [
        tiny_pipe.reference_unet.register_forward_hook(lambda *args: reference_passes.append(1)),
        layer.to_k.register_forward_hook(count_projection),
        tiny_pipe.pose_guider.register_forward_hook(lambda module, inputs, output: posed_frames.append(len(inputs[0]))),
    ]
    try:
        generate(tiny_pipe, reference_image, skeletons(20), context_frames=8, context_overlap=2, output_type="latent")
    finally:
        for hook in hooks:
            hook.remove()
    assert len(reference_passes) == 1
    assert len(reference_projections) == 1
    assert len(own_projections) == 2 * 3
    assert sum(posed_frames) == 20 and max(posed_frames) <= POSE_GUIDER_CHUNK  # each frame once, a few at a time


def test_long_video_in_overlapping_windows(tiny_pipe, reference_image, skeletons):
    progress = []
    out = generate(tiny_pipe, reference_image, skeletons(20), context_frames=8, context_overlap=2,
                   output_type="latent", on_progress=progress.append, num_inference_steps=1)
    assert out.frames.shape == (1, 4, 20, 8, 8) and torch.isfinite(out.frames).all()
    windows = [p["window"] for p in progress if p["stage"] == "denoise"]
    assert windows == [1, 2, 3]  # 0-7, 6-13, 12-19


@pytest.mark.parametrize("guidance_scale", [3.5, 1.0])
def test_loop_schedule_is_moores_wrapping_windows_with_a_plain_mean(
    tiny_pipe, reference_image, skeletons, guidance_scale
):
    """8 frames, windows of 4, overlap 2: [0-3] [2-5] [4-7] [6 7 0 1], each frame the mean of two."""
    from animate_backend.pose_features import draw_skeletons

    pipe, poses = tiny_pipe, skeletons(8)
    latents = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(5))
    looped = generate(pipe, reference_image, poses, latents=latents, context_frames=4, context_overlap=2,
                      context_schedule="loop", guidance_scale=guidance_scale, output_type="latent").frames

    # The same sampling written out by hand.
    windows = [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 0, 1]]
    pixels, clip_image = pipe.prepare_reference(reference_image, 64, 64)
    clip = pipe.encode_clip(clip_image, torch.device("cpu"))
    pipe.write_reference(pipe.encode_reference_latents(pixels, torch.device("cpu")), clip)
    drawn = draw_skeletons(poses, 64, 64)
    pipe.scheduler.set_timesteps(STEPS)
    x = latents * pipe.scheduler.init_noise_sigma
    try:
        for t in pipe.scheduler.timesteps:
            predictions = [[] for _ in range(8)]
            for window in windows:
                poses_of_window = pipe.pose_features(drawn[window], torch.device("cpu"))
                noise = pipe.predict_noise(x[:, :, window], t, poses_of_window, clip, guidance_scale=guidance_scale)
                for position, frame in enumerate(window):
                    predictions[frame].append(noise[:, :, position])
            mean = torch.stack([sum(p) / len(p) for p in predictions], dim=2)
            x = pipe.scheduler.step(mean, t, x).prev_sample
    finally:
        pipe.reference_bank.clear()
    torch.testing.assert_close(looped, x, rtol=1e-4, atol=1e-5)
    tapered = generate(pipe, reference_image, poses, latents=latents, context_frames=4, context_overlap=2,
                       guidance_scale=guidance_scale, output_type="latent").frames
    assert not torch.allclose(tapered, looped, atol=1e-3)  # the default schedule is another one


def test_decoded_frames_are_not_kept_while_streaming(tiny_pipe, reference_image, skeletons):
    """With output_type=None at most one decoded chunk is alive at any time, whatever the length."""
    alive: list[weakref.ref] = []
    most_alive = 0
    original_decode = tiny_pipe.vae.decode

    def spying_decode(*args, **kwargs):
        nonlocal most_alive
        gc.collect()
        most_alive = max(most_alive, sum(ref() is not None for ref in alive))
        output = original_decode(*args, **kwargs)
        alive.append(weakref.ref(output.sample))
        return output

    tiny_pipe.vae.decode = spying_decode
    try:
        generate(tiny_pipe, reference_image, skeletons(24), context_frames=8, num_inference_steps=1,
                 output_type=None, on_frames=lambda first, frames: None, decode_chunk_size=4)
    finally:
        del tiny_pipe.vae.decode
    assert len(alive) == 6 and most_alive == 0


def _peak_array_bytes(pipe, reference, poses, output_type) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        generate(pipe, reference, poses, context_frames=8, num_inference_steps=1, output_type=output_type,
                 on_frames=lambda first, frames: None)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_host_memory_does_not_grow_with_video_length_when_streaming(tiny_pipe, reference_image, skeletons):
    """numpy allocations (frames, skeletons) measured with tracemalloc for 8 and 32 frames.

    Streaming, each extra frame may cost its drawn skeleton (one uint8 frame) and nothing more;
    keeping the video ("np", float32) costs about five frames' worth per frame and is caught.
    """
    frame_bytes = 64 * 64 * 3
    short, long = skeletons(8), skeletons(32)
    streamed_growth = _peak_array_bytes(tiny_pipe, reference_image, long, None) - _peak_array_bytes(
        tiny_pipe, reference_image, short, None
    )
    kept_growth = _peak_array_bytes(tiny_pipe, reference_image, long, "np") - _peak_array_bytes(
        tiny_pipe, reference_image, short, "np"
    )
    assert streamed_growth / 24 < 1.5 * frame_bytes
    assert kept_growth / 24 > 3 * frame_bytes  # the measurement does see frames that are kept


# ----------------------------------------------------------------------------- preprocessing


def test_letterbox_keeps_aspect_and_lines_up_with_fitted_poses():
    from pose_bridge.keypoints import Pose

    image = np.zeros((50, 100, 3), dtype=np.uint8)  # wide
    image[20:30, 70:80] = 255
    boxed = letterbox(image, 64, 64, fill=(9, 9, 9))
    assert boxed.shape == (64, 64, 3)
    assert (boxed[:15] == 9).all() and (boxed[-15:] == 9).all()  # bars above and below
    pose = Pose(100, 50)
    pose.body[0] = (75, 25, 1.0)  # the centre of the white square
    x, y, _ = pose.fitted(64, 64).body[0]
    ys, xs = np.nonzero(boxed[:, :, 0] > 128)
    assert abs(xs.mean() - x) < 1.0 and abs(ys.mean() - y) < 1.0


def test_transparent_references_are_composited_onto_white():
    from animate_backend.images import to_rgb_array

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2, :, :] = (200, 0, 0, 255)  # opaque red top, transparent bottom
    rgb = to_rgb_array(rgba)
    assert rgb.shape == (4, 4, 3)
    assert (rgb[:2] == (200, 0, 0)).all() and (rgb[2:] == 255).all()
    with pytest.raises(InputError, match="uint8 array"):
        to_rgb_array(np.zeros((4, 4), dtype=np.float32))


def test_pose_sequences_are_drawn_at_the_output_size(tiny_pipe, reference_image):
    from pose_bridge.keypoints import Pose, PoseSequence

    from animate_backend.pose_features import draw_skeletons

    frames = []
    for i in range(3):
        pose = Pose(128, 256)
        pose.body[1] = (64, 60 + i, 1.0)
        pose.body[2] = (40, 62, 1.0)
        frames.append(pose)
    sequence = PoseSequence(frames, fps=24)
    drawn = draw_skeletons(sequence, 64, 64)
    assert drawn.shape == (3, 64, 64, 3) and drawn.any()
    out = generate(tiny_pipe, reference_image, sequence, output_type="latent", num_inference_steps=1)
    assert out.frames.shape == (1, 4, 3, 8, 8)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 60}, "multiples of 8"),
        ({"num_frames": 5}, "one pose per frame"),
        ({"context_frames": 40}, "between 1 and 32"),
        ({"context_overlap": 24}, "less than context_frames"),
        ({"output_type": "gif"}, "output_type"),
        ({"context_schedule": "uniform"}, "context_schedule must be one of tapered, loop"),
        ({"latents": torch.zeros(1, 4, 2, 8, 8)}, "latents must have shape"),
    ],
)
def test_bad_inputs_say_what_to_do(tiny_pipe, reference_image, skeletons, kwargs, message):
    with pytest.raises(InputError, match=message):
        generate(tiny_pipe, reference_image, skeletons(4), **kwargs)


def test_no_poses_is_an_input_error(tiny_pipe, reference_image):
    with pytest.raises(InputError, match="at least one frame"):
        generate(tiny_pipe, reference_image, [])


def test_cancel_between_windows_raises_and_leaves_nothing_behind(tiny_pipe, reference_image, skeletons):
    asked = []

    def should_cancel() -> bool:
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(CancelledError, match="step 2 of 2"):
        generate(tiny_pipe, reference_image, skeletons(12), context_frames=8, context_overlap=4,
                 should_cancel=should_cancel)
    assert tiny_pipe.reference_bank.tokens == {} and tiny_pipe.pose_injector.features is None


def test_half_precision_weights_keep_latents_in_float32(reference_image, skeletons):
    """The GPU path (fp16/bf16 weights) on the CPU with bf16: models in bf16, sampling in fp32."""
    from animate_backend.loading import load_pipeline

    loaded = load_pipeline("tiny", device="cpu", precision="bf16")
    assert loaded.pipe.denoising_unet.dtype == loaded.pipe.vae.dtype == torch.bfloat16
    latents = generate(loaded.pipe, reference_image, skeletons(3), output_type="latent").frames
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    frames = loaded.pipe.decode_video(latents, output_type="np")
    assert frames.shape == (1, 3, 64, 64, 3) and frames.dtype == np.float32


@pytest.mark.parametrize("scheduler_name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_other_diffusers_schedulers_drop_in(tiny_pipe, reference_image, skeletons, scheduler_name):
    import diffusers

    default = tiny_pipe.scheduler
    tiny_pipe.scheduler = getattr(diffusers, scheduler_name).from_config(default.config)
    try:
        latents = generate(tiny_pipe, reference_image, skeletons(10), context_frames=8, context_overlap=2,
                           output_type="latent", num_inference_steps=3).frames
    finally:
        tiny_pipe.scheduler = default
    assert latents.shape == (1, 4, 10, 8, 8) and torch.isfinite(latents).all()


def test_out_of_memory_becomes_an_error_with_advice(tiny_pipe, reference_image, skeletons, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tiny_pipe, "predict_noise", exhausted)
    with pytest.raises(OutOfMemoryError, match="smaller context window"):
        generate(tiny_pipe, reference_image, skeletons(4))
    assert tiny_pipe.reference_bank.tokens == {}


def test_zero_steps_is_an_input_error(tiny_pipe, reference_image, skeletons):
    with pytest.raises(InputError, match="num_inference_steps"):
        generate(tiny_pipe, reference_image, skeletons(2), num_inference_steps=0)


def test_the_cpu_decodes_two_frames_at_a_time(tiny_pipe):
    """Larger chunks buy no speed on the CPU and cost memory; accelerators take eight."""
    from animate_backend.pipeline import default_decode_chunk_size

    assert default_decode_chunk_size("cpu") == 2 and default_decode_chunk_size("cuda") == 8
    chunks = []
    tiny_pipe.decode_video(torch.zeros(1, 4, 5, 8, 8), on_frames=lambda first, frames: chunks.append(len(frames)),
                           output_type=None)
    assert chunks == [2, 2, 1]
