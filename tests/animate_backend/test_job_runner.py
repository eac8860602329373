"""run_job on real job folders with the tiny (untrained) pipeline on CPU: outputs, reruns, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from animate_backend import job_runner
from animate_backend.errors import CancelledError, InputError, OutOfMemoryError, WeightsError
from animate_backend.job_folder import job_lock
from animate_backend.job_runner import PipelineCache, run_job
from animate_backend.pose_input import prepare_poses
from pose_bridge.errors import JobError
from pose_bridge.image_io import read_image
from pose_bridge.job import JobPaths, JobSettings, write_job
from pose_bridge.keypoints import Pose, PoseSequence

# A standing figure, (x, y) in a 100 x 100 box, COCO-18 order.
STANDING = np.array([
    (50, 12), (50, 24), (40, 24), (36, 38), (34, 52), (60, 24), (64, 38), (66, 52),
    (44, 54), (43, 72), (43, 90), (56, 54), (57, 72), (57, 90), (47, 10), (53, 10), (44, 12), (56, 12),
], dtype=np.float32)


def figure(width: int, height: int, raise_arm: float = 0.0, scale: float = 1.0) -> Pose:
    """The standing figure on a width x height canvas; raise_arm lifts the right wrist."""
    points = STANDING.copy()
    points[4, 1] -= 30 * raise_arm
    points = (points - 50) * scale + 50
    body = np.zeros((18, 3), np.float32)
    body[:, 0] = points[:, 0] * width / 100
    body[:, 1] = points[:, 1] * height / 100
    body[:, 2] = 1.0
    return Pose(width, height, body=body)


def walking(frames: int, width: int = 64, height: int = 64, fps: float = 12.0) -> PoseSequence:
    return PoseSequence([figure(width, height, i / max(1, frames - 1)) for i in range(frames)], fps)


def reference_image(width: int = 64, height: int = 64) -> np.ndarray:
    """A smooth colourful picture (a gradient with a bright rectangle for the 'character')."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), np.full_like(x, 90)], -1)
    image[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = (230, 200, 40)
    return image.astype(np.uint8)


def make_job(job_dir: Path, frames: int = 3, poses: PoseSequence | None = None, reference=None, **settings) -> JobPaths:
    # guidance_scale 1 turns classifier-free guidance off: half the work, for speed.
    values = dict(model="tiny", width=64, height=64, fps=12.0, frame_start=1, frame_end=frames, steps=2,
                  guidance_scale=1.0, seed=7, context_frames=8, context_overlap=2, device="cpu")
    values.update(settings)
    return write_job(
        job_dir, JobSettings(**values),
        reference if reference is not None else reference_image(values["width"], values["height"]),
        poses if poses is not None else walking(frames),
    )


@pytest.fixture(scope="module")
def pipelines() -> PipelineCache:
    """One cache for the module, as the server keeps one: the tiny pipeline is built once."""
    return PipelineCache()


class CountingCache(PipelineCache):
    """A real cache that counts how often a pipeline is asked for."""

    def __init__(self, inner: PipelineCache) -> None:
        super().__init__()
        self.inner = inner
        self.requests = 0

    def get(self, *args, **kwargs):
        self.requests += 1
        return self.inner.get(*args, **kwargs)


def stages(events: list[dict]) -> list[str]:
    return [e["stage"] for e in events if e["type"] == "progress"]


def mtimes(paths: JobPaths, frames: int) -> list[int]:
    return [paths.frame(i).stat().st_mtime_ns for i in range(frames)]


def read_log(paths: JobPaths) -> list[dict]:
    return [json.loads(line) for line in paths.log.read_text().splitlines()]


def test_run_job_writes_frames_video_result_and_log(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=3, guidance_scale=2.0)
    events: list[dict] = []

    result = run_job(paths.root, pipelines=pipelines, on_event=events.append)

    # Frames: one PNG per job frame at the job's size, written in order, each announced.
    for i in range(3):
        assert read_image(paths.frame(i)).shape == (64, 64, 3)
    frame_events = [e for e in events if e["type"] == "frame"]
    assert [e["index"] for e in frame_events] == [0, 1, 2]
    assert [Path(e["path"]) for e in frame_events] == [paths.frame(i).resolve() for i in range(3)]

    # Progress: the protocol's keys; denoising counts steps and windows; an estimate once a step is timed.
    progress = [e for e in events if e["type"] == "progress"]
    for event in progress:
        assert set(event) == {"type", "stage", "step", "steps", "window", "windows", "frames_done",
                              "frames_total", "eta_s", "message"}
    assert stages(events)[0] == "loading" and stages(events)[-1] == "done"
    assert {"denoising", "decoding", "encoding"} <= set(stages(events))
    denoising = [e for e in progress if e["stage"] == "denoising"]
    assert denoising[-1]["steps"] == 2 and denoising[-1]["frames_total"] == 3
    assert denoising[-1]["eta_s"] is not None and denoising[-1]["eta_s"] >= 0

    # The video: H.264 at the job's fps, one picture per frame.
    with av.open(str(paths.video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert float(stream.average_rate) == pytest.approx(12.0)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 3 and decoded[0].shape == (64, 64, 3)

    # result.json is what run_job returned; the tiny model's output is labelled untrained.
    assert json.loads(paths.result.read_text()) == result
    assert result["frames"] == 3
    assert result["frame_paths"] == ["out/frames/0001.png", "out/frames/0002.png", "out/frames/0003.png"]
    assert result["video"] == "out/video.mp4"
    assert result["untrained"] is True
    assert result["seed"] == 7 and result["frames_generated"] == 3 and result["frames_reused"] == 0
    assert result["settings"]["steps"] == 2 and result["seconds"] > 0

    # The log: timestamped JSON lines from start to done, with the untrained warning.
    log = read_log(paths)
    assert log[0]["type"] == "start" and log[-1]["type"] == "done"
    assert all("time" in record and "elapsed_s" in record for record in log)
    assert any(r["type"] == "message" and "UNTRAINED" in r["message"] for r in log)
    assert paths.latents.is_file()
    assert not list(paths.out.rglob(".*")), "no temporary file may be left behind"


def test_rerun_of_a_finished_job_keeps_frames_and_loads_no_model(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=3)
    first = run_job(paths.root, pipelines=pipelines)
    before, video_before = mtimes(paths, 3), paths.video.stat().st_mtime_ns

    counting = CountingCache(pipelines)
    events: list[dict] = []
    again = run_job(paths.root, pipelines=counting, on_event=events.append)

    assert counting.requests == 0, "nothing to generate, so no model is loaded"
    assert "denoising" not in stages(events)
    assert mtimes(paths, 3) == before and paths.video.stat().st_mtime_ns == video_before
    assert again["frames_reused"] == 3 and again["frames_generated"] == 0
    assert again["fingerprint"] == first["fingerprint"] and again["untrained"] is True


def test_rerun_after_losing_frames_decodes_them_from_saved_latents(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=3)
    run_job(paths.root, pipelines=pipelines)
    lost = read_image(paths.frame(1))
    paths.frame(1).unlink()
    paths.video.unlink()
    kept = {i: paths.frame(i).stat().st_mtime_ns for i in (0, 2)}

    events: list[dict] = []
    result = run_job(paths.root, pipelines=pipelines, on_event=events.append)

    assert "denoising" not in stages(events), "the saved latents make denoising unnecessary"
    assert [e["index"] for e in events if e["type"] == "frame"] == [1]
    # The same latents decode to the same picture (up to 1/255 from the VAE's batch size).
    np.testing.assert_allclose(read_image(paths.frame(1)), lost, atol=1)
    assert {i: paths.frame(i).stat().st_mtime_ns for i in (0, 2)} == kept
    assert paths.video.is_file() and result["frames_generated"] == 1
    assert any("reusing the saved latents" in r.get("message", "") for r in read_log(paths))


def test_changed_settings_make_old_frames_stale(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=2)
    first = run_job(paths.root, pipelines=pipelines)
    old = [read_image(paths.frame(i)) for i in range(2)]

    settings = json.loads(paths.settings.read_text())
    settings["seed"] = 8
    paths.settings.write_text(json.dumps(settings))
    second = run_job(paths.root, pipelines=pipelines)

    assert second["fingerprint"] != first["fingerprint"]
    assert second["frames_generated"] == 2
    assert any(not np.array_equal(read_image(paths.frame(i)), old[i]) for i in range(2))


def test_frames_of_an_older_computation_are_made_again(tmp_path, pipelines, monkeypatch):
    # A version that computes other pictures from the same weights (e.g. before the motion
    # modules normalised per frame) must not have its frames reused.
    from animate_backend import pipeline

    paths = make_job(tmp_path / "job", frames=2)
    first = run_job(paths.root, pipelines=pipelines)
    monkeypatch.setattr(pipeline, "COMPUTATION_VERSION", pipeline.COMPUTATION_VERSION + 1)
    second = run_job(paths.root, pipelines=pipelines)
    assert second["fingerprint"] != first["fingerprint"] and second["frames_generated"] == 2


def test_the_loop_schedule_is_a_job_setting_that_changes_the_frames(tmp_path, pipelines):
    # 6 frames in windows of 4 (overlap 2): the schedules differ, so loop frames are not tapered ones.
    paths = make_job(tmp_path / "job", frames=6, poses=walking(6), context_frames=4, context_overlap=2)
    tapered = run_job(paths.root, pipelines=pipelines)
    settings = json.loads(paths.settings.read_text())
    assert settings["context_schedule"] == "tapered"
    settings["context_schedule"] = "loop"
    paths.settings.write_text(json.dumps(settings))
    looped = run_job(paths.root, pipelines=pipelines)
    assert looped["fingerprint"] != tapered["fingerprint"] and looped["frames_generated"] == 6


def test_weights_replaced_in_the_same_folder_make_old_frames_stale(tmp_path):
    """Re-converting, retraining or make-tiny --force into the model folder is another model:
    the frames and latents of the old weights are not reused, and a cache loads the new ones."""
    from animate_backend.tiny import make_tiny_pipeline, save_pipeline_folder

    model = tmp_path / "model"
    save_pipeline_folder(make_tiny_pipeline(seed=0), model)
    paths = make_job(tmp_path / "job", frames=2, model=str(model))
    cache = PipelineCache()
    first = run_job(paths.root, pipelines=cache)
    old = [read_image(paths.frame(i)) for i in range(2)]
    assert run_job(paths.root, pipelines=cache)["frames_reused"] == 2  # nothing changed: kept

    save_pipeline_folder(make_tiny_pipeline(seed=1), model, overwrite=True)  # same sizes, new weights
    assert not cache.is_loaded(str(model), "cpu"), "the cache must not serve the old weights"
    events: list[dict] = []
    second = run_job(paths.root, pipelines=cache, on_event=events.append)

    assert second["fingerprint"] != first["fingerprint"]
    assert second["frames_generated"] == 2 and "denoising" in stages(events), "old latents are not reused"
    assert any(not np.array_equal(read_image(paths.frame(i)), old[i]) for i in range(2))


def test_the_model_digest_reads_only_a_pipeline_folder():
    """A job naming "/" (or a home folder) as its model must fail on loading, not walk the disk first."""
    import time

    from animate_backend.loading import model_digest

    started = time.monotonic()
    assert model_digest("/") == "missing" and model_digest("tiny") == "tiny"
    assert time.monotonic() - started < 1


def test_another_precision_makes_old_frames_stale(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=2, precision="fp32")
    first = run_job(paths.root, pipelines=pipelines)
    settings = json.loads(paths.settings.read_text())
    settings["precision"] = "auto"  # fp32 on a CPU: the same computation, frames kept
    paths.settings.write_text(json.dumps(settings))
    assert run_job(paths.root, pipelines=pipelines)["frames_reused"] == 2

    settings["precision"] = "bf16"
    paths.settings.write_text(json.dumps(settings))
    second = run_job(paths.root, pipelines=pipelines)
    assert second["fingerprint"] != first["fingerprint"] and second["frames_generated"] == 2
    assert second["dtype"] == "bfloat16"


def test_a_failed_run_with_other_settings_leaves_the_finished_frames_alone(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=2)
    run_job(paths.root, pipelines=pipelines)
    before = mtimes(paths, 2)
    original = paths.settings.read_text()

    settings = json.loads(original)
    settings["model"] = str(tmp_path / "no_such_model")
    paths.settings.write_text(json.dumps(settings))
    with pytest.raises(WeightsError):
        run_job(paths.root, pipelines=pipelines)
    assert mtimes(paths, 2) == before and paths.video.is_file()

    paths.settings.write_text(original)
    result = run_job(paths.root, pipelines=pipelines)
    assert result["frames_reused"] == 2 and mtimes(paths, 2) == before


def test_cancel_while_denoising_writes_no_frame_and_a_rerun_finishes(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=3, steps=4)
    denoising_events = []

    def on_event(event):
        if event["type"] == "progress" and event["stage"] == "denoising":
            denoising_events.append(event)

    with pytest.raises(CancelledError):
        run_job(paths.root, pipelines=pipelines, on_event=on_event, should_cancel=lambda: len(denoising_events) >= 1)

    assert len(denoising_events) < 4, "the cancel took effect within a step"
    assert not paths.frames.exists() or not list(paths.frames.iterdir())
    assert not paths.latents.exists() and not paths.result.exists() and not paths.video.exists()
    assert not list(paths.out.rglob(".*")), "no temporary file may be left behind"
    assert read_log(paths)[-1]["type"] == "cancelled"

    result = run_job(paths.root, pipelines=pipelines)
    assert result["frames_generated"] == 3 and paths.video.is_file()


def test_cancel_while_decoding_keeps_finished_frames(tmp_path, pipelines, monkeypatch):
    paths = make_job(tmp_path / "job", frames=5)  # on the CPU the VAE decodes two frames at a time
    frames_seen = []

    def on_event(event):
        if event["type"] == "frame":
            frames_seen.append(event["index"])

    with pytest.raises(CancelledError):
        run_job(paths.root, pipelines=pipelines, on_event=on_event, should_cancel=lambda: len(frames_seen) >= 1)

    # The first chunk of two frames was finished when the cancel was seen: both are kept.
    assert frames_seen == [0, 1]
    assert [paths.frame(i).is_file() for i in range(5)] == [True, True, False, False, False]
    assert paths.latents.is_file() and not paths.result.exists()

    events: list[dict] = []
    result = run_job(paths.root, pipelines=pipelines, on_event=events.append)
    assert "denoising" not in stages(events)
    assert [e["index"] for e in events if e["type"] == "frame"] == [2, 3, 4]
    assert result["frames_generated"] == 3 and result["frames_reused"] == 2


def test_frames_only_output_writes_no_video(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=2, output_kinds=["frames"])
    result = run_job(paths.root, pipelines=pipelines)
    assert result["video"] is None and not paths.video.exists()
    assert paths.frame(1).is_file()


def test_poses_and_reference_of_another_shape_are_fitted(tmp_path, pipelines):
    # Poses drawn on a wide 160x90 canvas and a tall reference, for a 64x48 output.
    paths = make_job(
        tmp_path / "job", frames=2, width=64, height=48,
        poses=walking(2, width=160, height=90), reference=reference_image(40, 80),
    )
    result = run_job(paths.root, pipelines=pipelines)
    assert read_image(paths.frame(0)).shape == (48, 64, 3)
    assert result["width"] == 64 and result["height"] == 48
    notes = [r["message"] for r in read_log(paths) if r["type"] == "message"]
    assert any("reference.png is 40x80" in n for n in notes)
    assert any("poses' canvas is 160x90" in n for n in notes)


def test_prepare_poses_fits_then_retargets_onto_the_reference_skeleton(tmp_path):
    from pose_bridge.openpose_json import write_frame
    from pose_bridge.retarget import retarget_sequence

    driving = PoseSequence([figure(128, 128, 0.5, scale=0.6)], 12.0)
    reference = figure(64, 64)
    write_frame(reference, tmp_path / "reference_pose.json")

    plain = prepare_poses(driving, 64, 64)
    retargeted = prepare_poses(driving, 64, 64, "global", tmp_path / "reference_pose.json")

    assert plain.canvas_width == 64 and plain[0].body[1, 0] == pytest.approx(32.0)
    expected = retarget_sequence(driving.fitted(64, 64), reference, mode="global")
    np.testing.assert_allclose(retargeted[0].body, expected[0].body, atol=1e-4)
    # Global retargeting scales the small driving figure up to the reference's size.
    height = lambda pose: pose.body[[10, 13], 1].mean() - pose.body[0, 1]  # noqa: E731
    assert height(retargeted[0]) == pytest.approx(height(reference), rel=0.1)


def test_retarget_job_uses_reference_pose_file(tmp_path, pipelines):
    from pose_bridge.openpose_json import write_frame

    poses = PoseSequence([figure(64, 64, i / 2, scale=0.6) for i in range(3)], 12.0)
    plain = make_job(tmp_path / "plain", frames=3, poses=poses)
    retargeted = make_job(tmp_path / "retargeted", frames=3, poses=poses, retarget="chain")
    write_frame(figure(64, 64), retargeted.reference_pose)

    run_job(plain.root, pipelines=pipelines)
    result = run_job(retargeted.root, pipelines=pipelines)

    assert result["settings"]["retarget"] == "chain"
    assert not np.array_equal(read_image(plain.frame(0)), read_image(retargeted.frame(0)))


def test_retarget_without_reference_pose_says_what_to_do(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=2, retarget="chain")
    with pytest.raises(InputError, match="reference_pose.json.*retarget to none"):
        run_job(paths.root, pipelines=pipelines)
    assert not paths.frames.exists() or not list(paths.frames.iterdir())


def test_the_jobs_scheduler_is_used_and_the_cached_pipeline_switches_back(tmp_path, pipelines):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    euler = make_job(tmp_path / "euler", frames=2, scheduler="euler")
    run_job(euler.root, pipelines=pipelines)
    pipe = pipelines.get("tiny", "cpu", "auto", "euler").pipe
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction", "the model's noise schedule is kept"

    ddim = make_job(tmp_path / "ddim", frames=2)
    run_job(ddim.root, pipelines=pipelines)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert not np.array_equal(read_image(euler.frame(0)), read_image(ddim.frame(0)))


def test_missing_job_folder(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        run_job(tmp_path / "nowhere")


def test_job_json_that_is_not_json(tmp_path):
    paths = make_job(tmp_path / "job", frames=2)
    paths.settings.write_text("{ not json")
    with pytest.raises(JobError, match="not valid JSON"):
        run_job(paths.root)


def test_size_not_a_multiple_of_8(tmp_path):
    paths = make_job(tmp_path / "job", frames=2)
    settings = json.loads(paths.settings.read_text())
    settings["width"] = 60
    paths.settings.write_text(json.dumps(settings))
    with pytest.raises(JobError, match="multiples of 8"):
        run_job(paths.root)


def test_frame_range_and_poses_disagree(tmp_path):
    paths = make_job(tmp_path / "job", frames=2)
    settings = json.loads(paths.settings.read_text())
    settings["frame_end"] = 5
    paths.settings.write_text(json.dumps(settings))
    with pytest.raises(JobError, match="has 2 frames but job.json asks for 5"):
        run_job(paths.root)


def test_missing_weights(tmp_path):
    paths = make_job(tmp_path / "job", frames=2, model=str(tmp_path / "no_such_model"))
    with pytest.raises(WeightsError):
        run_job(paths.root)
    assert not paths.frames.exists() or not list(paths.frames.iterdir())


def test_out_of_memory_is_reported_with_advice(tmp_path, pipelines, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(job_runner, "denoise", out_of_memory)
    paths = make_job(tmp_path / "job", frames=2)
    with pytest.raises(OutOfMemoryError, match="smaller context window") as info:
        run_job(paths.root, pipelines=pipelines)
    assert info.value.kind == "out_of_memory"


def test_cache_keeps_the_model_loaded_between_jobs(tmp_path, pipelines):
    loaded = pipelines.get("tiny", "cpu", "auto")
    assert pipelines.get("tiny", "cpu", "auto") is loaded
    assert len(pipelines) == 1


def test_run_command_line(tmp_path, pipelines, capsys, monkeypatch):
    from animate_backend.__main__ import main

    paths = make_job(tmp_path / "job", frames=2)
    assert main(["run", str(paths.root), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["frames"] == 2
    assert "UNTRAINED" in captured.err


def test_progress_estimates_time_left_from_finished_windows(monkeypatch):
    from animate_backend import events

    clock = [100.0]
    monkeypatch.setattr(events.time, "monotonic", lambda: clock[0])
    emitted: list[dict] = []
    tracker = events.ProgressTracker(emitted.append, frames_total=30)

    tracker.on_pipeline_progress({"stage": "reference", "step": 0, "steps": 0, "window": 0, "windows": 0,
                                  "frames_done": 0, "frames_total": 30})
    clock[0] += 2.0  # the first of 2 windows x 10 steps took 2 s
    tracker.on_pipeline_progress({"stage": "denoise", "step": 1, "steps": 10, "window": 1, "windows": 2,
                                  "frames_done": 0, "frames_total": 30})
    clock[0] += 8.0  # 5 units in 10 s: 2 s each, 15 left
    tracker.on_pipeline_progress({"stage": "denoise", "step": 3, "steps": 10, "window": 1, "windows": 2,
                                  "frames_done": 0, "frames_total": 30})

    reference, first, third = emitted
    assert reference["stage"] == "reference" and reference["step"] is None and reference["eta_s"] is None
    assert first["stage"] == "denoising" and first["eta_s"] == pytest.approx(38.0)
    assert (third["step"], third["steps"], third["window"], third["windows"]) == (3, 10, 1, 2)
    assert third["eta_s"] == pytest.approx(30.0)


def test_outputs_get_the_permissions_of_ordinary_files(tmp_path, pipelines):
    """Farm nodes and colleagues must be able to read what a job wrote (not 0600 from mkstemp)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        paths = make_job(tmp_path / "job", frames=2)
        run_job(paths.root, pipelines=pipelines)
    finally:
        os.umask(old)
    files = [paths.settings, paths.reference, paths.poses, paths.video, paths.result, paths.latents,
             paths.log, *(paths.frame(i) for i in range(2))]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, f"{path.name} is {oct(path.stat().st_mode)}"


def test_temporary_files_of_a_killed_run_are_removed_by_the_next_run(tmp_path, pipelines):
    from pose_bridge.files import atomic_path

    paths = make_job(tmp_path / "job", frames=2)
    run_job(paths.root, pipelines=pipelines)
    # Writers killed half way: each context is entered and never left, as when the process dies
    # (kept referenced: a context collected as garbage would clean up after itself).
    killed = [atomic_path(target) for target in (paths.video, paths.frame(1), paths.latents, paths.result)]
    for writer in killed:
        writer.__enter__().write_bytes(b"half a file")
    leftovers = [p for p in [*paths.out.iterdir(), *paths.frames.iterdir()] if p.name.startswith(".")]
    assert len(leftovers) == 4
    (paths.out / "notes.txt").write_text("the user's")
    (paths.out / ".keep").write_text("also the user's")

    result = run_job(paths.root, pipelines=pipelines)

    assert not any(p.exists() for p in leftovers)
    assert (paths.out / "notes.txt").read_text() == "the user's" and (paths.out / ".keep").exists()
    assert result["frames_reused"] == 2


def test_a_job_runs_in_one_process_at_a_time(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=2)
    with job_lock(paths):  # as another process running it holds it
        with pytest.raises(JobError, match="being run by another process"):
            run_job(paths.root, pipelines=pipelines)
    assert run_job(paths.root, pipelines=pipelines)["frames"] == 2


def test_ctrl_c_is_recorded_in_the_log_and_a_rerun_finishes(tmp_path, pipelines, monkeypatch):
    paths = make_job(tmp_path / "job", frames=2)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(job_runner, "denoise", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_job(paths.root, pipelines=pipelines)
    assert read_log(paths)[-1]["type"] == "interrupted"
    assert run_job(paths.root, pipelines=pipelines)["frames_generated"] == 2


def test_sigterm_stops_the_run_command_like_ctrl_c(tmp_path):
    """A farm stopping a task sends SIGTERM: the run says so in log.jsonl and exits 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    paths = make_job(tmp_path / "job", frames=2, steps=1000)
    process = subprocess.Popen([sys.executable, "-m", "animate_backend", "run", str(paths.root), "-q"],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (paths.log.is_file() and '"denoising"' in paths.log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
    assert read_log(paths)[-1]["type"] == "interrupted"
    assert not [p for p in paths.out.rglob(".*")], "no temporary file is left"


def test_something_in_the_way_of_an_output_is_a_clear_error_and_is_left_alone(tmp_path, pipelines):
    for name, block in [("out", "file"), ("out/frames", "file"), ("out/video.mp4", "folder"),
                        ("out/log.jsonl", "folder"), ("out/frames/0001.png", "folder")]:
        paths = make_job(tmp_path / name.replace("/", "_"), frames=2)
        target = paths.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("mine") if block == "file" else target.mkdir()
        with pytest.raises(JobError, match="is in the way"):
            run_job(paths.root, pipelines=pipelines)
        assert target.exists() and (target.is_dir() == (block == "folder"))


def test_a_damaged_frame_file_is_made_again(tmp_path, pipelines):
    paths = make_job(tmp_path / "job", frames=2)
    run_job(paths.root, pipelines=pipelines)
    good = read_image(paths.frame(1))
    paths.frame(1).write_bytes(b"not a png")
    result = run_job(paths.root, pipelines=pipelines)
    assert result["frames_generated"] == 1
    np.testing.assert_allclose(read_image(paths.frame(1)), good, atol=1)  # decoded again from the latents
