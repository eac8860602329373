"""The farm on a real local Ray cluster (2 CPUs) with the tiny untrained model.

Shots are real .blend files built here with bpy (the demo character, 64x64, 6 frames, 2
steps); exports run the add-on's command line in child processes, generation runs in Generator
actors loading a make-tiny folder. One cluster serves the whole module; each fresh actor costs
a Python with torch (~10-20 s on a busy 2-core machine), so the tests keep to three of them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
bpy = pytest.importorskip("bpy")

from animate_backend.farm.runner import FarmOptions, run_farm  # noqa: E402
from animate_backend.farm.shots import make_shots  # noqa: E402
from blender_addon.commands import demo_scene  # noqa: E402
from pose_bridge.image_io import read_image  # noqa: E402
from pose_bridge.job import JobPaths  # noqa: E402

FRAMES = 6
SHOT_OPTIONS = ["--frames", f"1-{FRAMES}", "--size", "64x64", "--steps", "2", "--engine", "CYCLES"]
# Before decoding: the stages of a job that runs on the actor and has written no frame yet.
BEFORE_FRAMES = ("loading", "preparing", "reference", "denoising")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A make-tiny pipeline folder: actors load it from disk, as they would a real model."""
    from animate_backend.__main__ import main

    folder = tmp_path_factory.mktemp("model") / "tiny"
    assert main(["make-tiny", "--out", str(folder)]) == 0
    return str(folder)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def save_shot(path: Path, camera: bool = True) -> Path:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = demo_scene.build_demo_scene(width=64, height=64, frames=FRAMES)
    if not camera:
        bpy.data.objects.remove(scene.camera)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def frames_of(job_dir: Path) -> list[np.ndarray]:
    paths = JobPaths(job_dir)
    return [read_image(paths.frame(i)).astype(np.int16) for i in range(FRAMES)]


def log_records(job_dir: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in JobPaths(job_dir).log.read_text().splitlines()]
    return [record for record in records if record.get("type") == kind]


def options(out: Path, model: str) -> FarmOptions:
    return FarmOptions(out=out, model=model, shot_options=SHOT_OPTIONS, poll_s=0.2)


def test_a_shot_list_survives_a_killed_actor_reports_a_failure_and_resumes(cluster, tiny_model, tmp_path):
    save_shot(tmp_path / "sh010.blend")
    shutil.copy(tmp_path / "sh010.blend", tmp_path / "sh020.blend")  # the same shot: the same pictures
    save_shot(tmp_path / "sh030.blend", camera=False)
    # Options given for every shot (SHOT_OPTIONS) and per shot (here --context-overlap).
    lines = ["sh010.blend --context-overlap 2", "sh020.blend --context-overlap 2", "sh030.blend   # no camera: fails"]
    listing = tmp_path / "shots.txt"
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "renders"

    # Kill the actor while it generates sh020, before any frame is written. The farm reports a job
    # as soon as it is handed to an actor, so the kill lands even when the job itself is quick.
    killed = []

    def kill_during_sh020(states):
        sh020 = states[1]
        if not killed and sh020.status == "generating" and sh020.worker_pid and sh020.stage in ("starting", *BEFORE_FRAMES):
            killed.append((sh020.worker_pid, sh020.stage))
            os.kill(sh020.worker_pid, signal.SIGKILL)

    messages: list[str] = []
    states = run_farm(make_shots(out, [], listing), options(out, tiny_model), kill_during_sh020, messages.append)

    sh010, sh020, sh030 = states
    assert [s.status for s in states] == ["done", "done", "failed"], messages
    assert len(killed) == 1, "the actor was never seen generating sh020 before its frames"
    assert (sh010.attempts, sh020.attempts) == (1, 2)
    assert sh020.worker_pid != killed[0][0]  # retried on a fresh actor
    assert sum("sh020: the worker generating it was lost" in m for m in messages) == 1
    # A user error is reported once, with the add-on's own reason, and never retried.
    assert sh030.detail.startswith("export: scene 'Demo' has no active camera")
    assert (sh030.export_attempts, sh030.attempts) == (1, 0)

    # The job folders are what `python -m animate_backend run` writes.
    for state in (sh010, sh020):
        paths = JobPaths(state.shot.job_dir)
        settings = json.loads(paths.settings.read_text())
        assert (settings["steps"], settings["context_overlap"], settings["model"]) == (2, 2, tiny_model)
        result = json.loads(paths.result.read_text())
        assert result["format"] == "animate_backend.result" and result["frames"] == FRAMES and result["untrained"]
        assert paths.video.stat().st_size > 0 and state.detail == f"{paths.video} (UNTRAINED model)"
    # The retry ran in the same job folder, and its output is the undisturbed run's. (The killed
    # attempt logged its own start only if the actor had begun the job before the kill.)
    assert len(log_records(sh020.shot.job_dir, "start")) in (1, 2)
    for name in ("reference.png", "poses.json"):
        assert (out / "sh010" / name).read_bytes() == (out / "sh020" / name).read_bytes()
    undisturbed, retried = frames_of(out / "sh010"), frames_of(out / "sh020")
    assert max(int(np.abs(a - b).max()) for a, b in zip(undisturbed, retried)) <= 1

    # A rerun skips the done shot and picks sh020 up where a lost worker would have left it in the
    # middle of decoding: half its frames written. Only the missing frames are made, from the
    # saved latents, and the frames already there are left alone.
    paths = JobPaths(out / "sh020")
    kept = {i: paths.frame(i).stat().st_mtime_ns for i in range(FRAMES // 2)}
    for i in range(FRAMES // 2, FRAMES):
        paths.frame(i).unlink()
    listing.write_text("\n".join(lines[:2]) + "\n")
    rerun = run_farm(make_shots(out, [], listing), options(out, tiny_model))

    assert [s.status for s in rerun] == ["skipped", "done"]
    result = json.loads(paths.result.read_text())
    assert (result["frames_reused"], result["frames_generated"]) == (FRAMES // 2, FRAMES - FRAMES // 2)
    assert {i: paths.frame(i).stat().st_mtime_ns for i in kept} == kept
    assert any("reusing the saved latents" in (r.get("message") or "") for r in log_records(paths.root, "message"))
    assert max(int(np.abs(a - b).max()) for a, b in zip(undisturbed, frames_of(out / "sh020"))) <= 1


def _processes_with(text: str) -> list[int]:
    """Pids of the processes whose command line mentions text."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_ctrl_c_stops_a_running_export(cluster, tmp_path):
    blend = save_shot(tmp_path / "sh040.blend")

    def interrupt_once_blender_runs(states):
        if states[0].status == "exporting" and _processes_with(str(blend)):
            raise KeyboardInterrupt

    states = run_farm(make_shots(tmp_path / "renders", [blend]), options(tmp_path / "renders", "tiny"),
                      interrupt_once_blender_runs)

    assert (states[0].status, states[0].detail) == ("cancelled", "cancelled while exporting")
    deadline = time.monotonic() + 15
    while _processes_with(str(blend)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(str(blend)), "the export's Blender process outlived the cancel"


def test_ctrl_c_stops_a_running_generation_cleanly(cluster, tiny_model, tmp_path):
    blend = save_shot(tmp_path / "sh050.blend")
    out = tmp_path / "renders"

    def interrupt_once_generating(states):
        if states[0].status == "generating" and states[0].stage in BEFORE_FRAMES:
            raise KeyboardInterrupt

    # Many steps, so that the job is still denoising when the farm looks, even on a fast machine.
    slow = FarmOptions(out=out, model=tiny_model, shot_options=[*SHOT_OPTIONS, "--steps", "30"], poll_s=0.2)
    states = run_farm(make_shots(out, [blend]), slow, interrupt_once_generating)

    assert (states[0].status, states[0].detail) == ("cancelled", "cancelled; the frames made so far are kept")
    # The job runner was told to stop (not killed): it logged the cancel and left no result behind.
    assert [r["type"] for r in log_records(out / "sh050", "cancelled")] == ["cancelled"]
    assert not JobPaths(out / "sh050").result.exists()
