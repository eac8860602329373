"""The add-on's operators in real Blender (the bpy module), with the real backend server.

Generate runs through `python -m animate_backend serve` with the tiny untrained pipeline at
64x64, one denoising step. Modal operators need an event loop, which the bpy module does
not have, so most runs drive the GenerateController the modal operator uses (start, poll,
cancel, finish); the operator itself is run too (without a window it runs to the end).
One server is shared by the tests of this module: each new one costs a torch import.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import bpy
import numpy as np
import pytest

import ui_scene
from blender_addon.connection import client as backend_client
from blender_addon.connection import generation
from blender_addon.ui import operators, scene_options
from pose_bridge.job import JobPaths, read_settings


@pytest.fixture(scope="module")
def backend():
    """One backend server for the module's controller tests."""
    client = backend_client.BackendClient(ui_scene.backend_python())
    client.connect(timeout=180)
    yield client
    client.shutdown()


@pytest.fixture
def scene(tmp_path):
    scene = ui_scene.build_scene(tmp_path)
    ui_scene.enable_addon()
    ui_scene.configure(scene, tmp_path)
    generation.ACTIVE = None
    return scene


def prefs():
    return bpy.context.preferences.addons[ui_scene.ADDON].preferences


def run_controller(scene, runner, job_dir, import_mode="PLANE", on_event=None, timeout=180):
    """Start a controller and poll it the way the modal operator's timer does."""
    options = scene_options.export_options(scene, prefs())
    controller = generation.GenerateController(
        scene, options, job_dir, runner, import_mode=import_mode, camera=scene.camera
    )
    controller.start()
    generation.ACTIVE = controller  # as the operator does: the panel's Cancel button acts on it
    stages = []
    deadline = time.monotonic() + timeout
    while not controller.finished:
        assert time.monotonic() < deadline, "the backend did not finish in time"
        controller.poll()
        if not stages or stages[-1] != controller.progress.stage:
            stages.append(controller.progress.stage)
        if on_event is not None:
            on_event(controller)
        time.sleep(0.01)
    return controller, stages


# ---------------------------------------------------------------- mapping, preview, export


def test_refresh_mapping_detects_the_preset(scene):
    settings = scene.animate_anyone
    assert settings.preset_label == "Mixamo"
    rows = {(item.group, item.keypoint): item for item in settings.bone_map}
    assert (rows[("body", "right_elbow")].bone, rows[("body", "right_elbow")].end) == ("RightForeArm", "head")
    assert rows[("body", "nose")].kind == "OFFSET" and rows[("body", "nose")].bone == "Head"
    assert rows[("left_hand", "index_1")].bone == ""  # this rig has no fingers

    rows[("body", "right_elbow")].bone = "RightHand"  # an edit...
    assert bpy.ops.animate_anyone.refresh_mapping() == {"FINISHED"}
    rows = {(item.group, item.keypoint): item for item in settings.bone_map}
    assert rows[("body", "right_elbow")].bone == "RightForeArm"  # ...undone by Refresh


def test_preview_skeleton_draws_the_current_frame(scene):
    from blender_addon.export.job_export import preview_skeleton

    pictures = []
    for frame in (1, 3):
        scene.frame_set(frame)
        assert bpy.ops.animate_anyone.preview_skeleton() == {"FINISHED"}
        image = bpy.data.images[operators.PREVIEW_IMAGE_NAME]
        assert tuple(image.size) == (64, 64)
        pixels = np.empty(64 * 64 * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        rgb = np.round(pixels.reshape(64, 64, 4)[::-1, :, :3] * 255).astype(np.uint8)
        expected = preview_skeleton(scene, scene_options.export_options(scene, prefs(), for_frame=frame), frame)
        np.testing.assert_array_equal(rgb, expected)  # the right way up, exactly the drawn skeleton
        assert rgb.any()
        pictures.append(rgb)
    assert not np.array_equal(pictures[0], pictures[1])  # the arm moved


def test_export_job_writes_the_job_folder(scene, tmp_path):
    settings = scene.animate_anyone
    settings.bone_map[0].bone = ""  # the nose row cleared by the user
    assert bpy.ops.animate_anyone.export_job() == {"FINISHED"}
    paths = JobPaths(settings.last_job_dir)
    assert paths.root.parent == tmp_path / "out"
    job = read_settings(paths.root)
    assert (job.width, job.height, job.frame_start, job.frame_end) == (64, 64, 1, 3)
    assert (job.model, job.steps, job.context_frames, job.device) == ("tiny", 1, 8, "cpu")
    assert job.provenance["armature"] == "Hero" and job.provenance["camera"] == "Cam"
    assert paths.reference.is_file()
    poses = json.loads(paths.poses.read_text())
    assert len(poses["frames"]) == 3
    for frame in poses["frames"]:
        body = frame["people"][0]["pose_keypoints_2d"]
        assert body[2] == 0  # nose: not mapped, so missing
        assert body[1 * 3 + 2] > 0  # neck: mapped and in view


def test_scripts_give_settings_to_the_operator_like_gltf_export_options(scene, tmp_path):
    """bpy.ops.animate_anyone.export_job(**settings): those settings for this run, the rest from the
    scene; nothing is written back into the scene."""
    settings = scene.animate_anyone
    settings.guidance_scale = 2.5
    before = (settings.steps, settings.seed, settings.draw_hands, settings.context_schedule)
    job_dir = tmp_path / "scripted"
    result = bpy.ops.animate_anyone.export_job(directory=str(job_dir), steps=3, seed=9, draw_hands=True,
                                                context_schedule="loop", precision="fp32")
    assert result == {"FINISHED"}
    job = read_settings(job_dir)
    assert (job.steps, job.seed, job.draw_hands, job.context_schedule, job.precision) == (3, 9, True, "loop", "fp32")
    assert job.guidance_scale == 2.5 and job.device == "cpu"  # the scene's and the preferences'
    assert (settings.steps, settings.seed, settings.draw_hands, settings.context_schedule) == before

    # The operator checks its settings as the panel does: a bad value never reaches a job.
    with pytest.raises(TypeError):
        bpy.ops.animate_anyone.export_job(directory=str(tmp_path / "bad"), scheduler="magic")


def test_each_setting_has_one_default_everywhere(scene):
    """The scene's properties, the operators' and both command lines take their defaults, ranges
    and choices from pose_bridge.settings."""
    import argparse

    from animate_backend.cli_jobs import register as backend_commands
    from blender_addon.commands.cli import build_parser
    from pose_bridge.settings import GENERATION_SETTINGS, SETTINGS, default_of

    backend = argparse.ArgumentParser()
    backend_commands(backend.add_subparsers())
    generate = backend._subparsers._group_actions[0].choices["generate"]
    addon = build_parser()
    scene_props = bpy.types.Scene.bl_rna.properties["animate_anyone"].fixed_type.properties
    op_props = bpy.ops.animate_anyone.generate.get_rna_type().properties
    for name in GENERATION_SETTINGS:
        assert scene_props[name].default == default_of(name) and op_props[name].default == default_of(name), name
        assert addon.get_default(name) == default_of(name), name
        if name not in ("scheduler", "retarget"):  # the backend's generate has no sampler or retargeting
            assert generate.get_default(name) == default_of(name), name
        if SETTINGS[name].choices:
            assert [item.identifier for item in scene_props[name].enum_items] == list(SETTINGS[name].values)
    assert scene_props["steps"].hard_max == SETTINGS["steps"].maximum


# ---------------------------------------------------------------- clear reports


def _no_armature(scene):
    scene.animate_anyone.armature = None


def _no_camera(scene):
    bpy.data.objects.remove(scene.objects["Cam"])


def _empty_range(scene):
    settings = scene.animate_anyone
    settings.use_scene_range = False
    settings.frame_start, settings.frame_end = 5, 2


def _unmapped_body(scene):
    for item in scene.animate_anyone.bone_map:
        if item.keypoint in ("neck", "right_shoulder", "left_knee"):
            item.bone = ""


def _bone_not_in_rig(scene):
    scene.animate_anyone.bone_map[2].bone = "NoSuchBone"


def _no_model(scene):
    prefs().model_dir = ""


def _no_backend(scene):
    prefs().backend_python = "/nonexistent/bin/python"


BAD_SCENES = {
    "no armature": (_no_armature, "No armature chosen"),
    "no camera": (_no_camera, "has no camera"),
    "empty frame range": (_empty_range, "5-2 has no frames"),
    # The neck row is cleared too, but the neck comes from the shoulders: it is not listed.
    "unmapped bones": (_unmapped_body, "have no bone: right_shoulder, left_knee;"),
    "bone not in rig": (_bone_not_in_rig, "NoSuchBone"),
    "no model": (_no_model, "No model folder is set"),
    "no backend": (_no_backend, "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_SCENES), ids=list(BAD_SCENES))
def test_generate_reports_what_to_fix(scene, tmp_path, case):
    spoil, message = BAD_SCENES[case]
    spoil(scene)
    with pytest.raises(RuntimeError, match=message):  # the bpy module raises an operator's ERROR report
        bpy.ops.animate_anyone.generate()
    assert generation.ACTIVE is None  # nothing started
    if case not in ("no backend",):
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- Generate, end to end


@pytest.mark.parametrize("mode", ["PLANE", "STRIP", "COMPOSITOR"])
def test_generate_imports_the_result(scene, tmp_path, backend, mode):
    controller, stages = run_controller(scene, backend, tmp_path / "job", import_mode=mode)
    assert controller.state == "done", controller.message
    assert "UNTRAINED" in controller.message
    assert "decoding" in stages and stages[-1] == "done"
    paths = controller.paths
    assert [p.name for p in sorted(paths.frames.glob("*.png"))] == ["0001.png", "0002.png", "0003.png"]
    assert paths.video.is_file()
    assert controller.result["frames"] == 3 and controller.progress.frames_done == 3

    made = controller.finish()
    if mode == "PLANE":
        assert made.type == "MESH" and made.parent == scene.camera
        texture = next(n for n in made.data.materials[0].node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
        assert bpy.path.abspath(texture.image.filepath) == str(paths.video)
        assert texture.image_user.frame_start == 1
    elif mode == "STRIP":
        assert made.type == "MOVIE" and made.frame_final_start == 1 and made.frame_final_duration == 3
    else:
        assert made.bl_idname == "CompositorNodeMovieClip" and made.clip.frame_duration == 3
    assert controller.finish() is made  # finishing twice imports once


def test_generate_writes_the_job_in_steps_then_runs_it(tmp_path, backend):
    """Writing the job is spread over polls (one frame each at budget 0), then the backend runs it."""
    frames = 5
    scene = ui_scene.build_scene(tmp_path, frames=frames)
    ui_scene.enable_addon()
    ui_scene.configure(scene, tmp_path, import_mode="NONE")
    scene.frame_set(3)
    controller = generation.GenerateController(
        scene, scene_options.export_options(scene, prefs()), tmp_path / "job", backend, import_mode="NONE",
        export_budget_s=0,
    )
    controller.start()
    assert controller.state == "exporting" and controller.progress.frames_done == 0
    assert not (tmp_path / "job").exists()

    exported = []
    deadline = time.monotonic() + 180
    while not controller.finished:
        assert time.monotonic() < deadline, "the backend did not finish in time"
        controller.poll()
        if controller.progress.stage == "exporting":
            exported.append(controller.progress.frames_done)
        time.sleep(0.01)
    assert exported[:frames] == list(range(1, frames + 1))  # a frame per poll, in order
    assert exported == sorted(exported) and exported[-1] == frames
    assert controller.state == "done", controller.message
    assert controller.result["frames"] == frames
    assert scene.frame_current == 3  # the export put the scene back on the user's frame


def test_cancel_keeps_the_finished_frames(tmp_path, backend):
    frames = 17
    scene = ui_scene.build_scene(tmp_path, frames=frames)
    ui_scene.enable_addon()
    ui_scene.configure(scene, tmp_path, import_mode="STRIP")

    def cancel_when_decoding_starts(controller):
        # Denoising writes no frame; decoding writes them chunk by chunk and checks for a cancel
        # after each chunk, so a cancel sent now stops the run with the first chunk finished.
        if controller.progress.stage == "decoding" and controller.state == "running":
            assert bpy.ops.animate_anyone.cancel_generate() == {"FINISHED"}  # the panel's Cancel button
            assert controller.state == "cancelling"

    controller, _ = run_controller(
        scene, backend, tmp_path / "job", import_mode="STRIP", on_event=cancel_when_decoding_starts
    )
    assert controller.state == "cancelled", controller.message
    assert "finished frames kept" in controller.message
    paths = controller.paths
    kept = sorted(p.name for p in paths.frames.glob("*.png"))
    assert 0 < len(kept) < frames
    assert kept == [f"{i:04d}.png" for i in range(1, len(kept) + 1)]  # the leading frames, no gaps
    assert controller.frames_done == len(kept)
    assert not paths.video.exists() and not paths.result.exists()
    strip = controller.finish()  # the finished frames come in as an image sequence
    assert strip.type == "IMAGE" and strip.frame_final_duration == len(kept)

    # The server is still fine: the next run on it succeeds.
    scene.animate_anyone.use_scene_range = False
    scene.animate_anyone.frame_start, scene.animate_anyone.frame_end = 1, 2
    again, _ = run_controller(scene, backend, tmp_path / "job2", import_mode="NONE")
    assert again.state == "done", again.message


def _fake_backend(tmp_path, body: str) -> str:
    """An executable that stands in for the backend's Python (it ignores `-m animate_backend serve`)."""
    script = tmp_path / "fake_python"
    script.write_text(f"#!{sys.executable}\nimport sys, json\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_backend_that_fails_to_start_gives_its_last_words(scene, tmp_path):
    python = _fake_backend(tmp_path, "print('ModuleNotFoundError: No module named torch', file=sys.stderr)\nsys.exit(3)")
    controller, _ = run_controller(scene, backend_client.BackendClient(python), tmp_path / "job")
    assert controller.state == "failed"
    assert controller.error_kind == backend_client.KIND_DIED
    assert "exit code 3" in controller.message and "No module named torch" in controller.message
    assert controller.finish() is None


def test_backend_of_another_protocol_version_is_refused(scene, tmp_path):
    python = _fake_backend(
        tmp_path,
        "sys.stdin.readline()\n"
        "print(json.dumps({'type': 'hello', 'protocol': 99, 'version': '9.0'}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    if 'shutdown' in line:\n"
        "        break",
    )
    controller, _ = run_controller(scene, backend_client.BackendClient(python), tmp_path / "job")
    assert controller.state == "failed"
    assert controller.error_kind == backend_client.KIND_PROTOCOL
    assert "protocol version 99" in controller.message and "update the backend" in controller.message


def test_crashed_backend_is_reported_and_the_next_generate_works(scene, tmp_path):
    """The operator path: the shared server dies mid-run; the next Generate starts a new one."""
    client = backend_client.shared_client(ui_scene.backend_python())

    def kill_once_running(controller):
        if controller.progress.stage in ("loading", "preparing", "reference", "denoising") and client.alive:
            os.kill(client.process.pid, 9)

    crashed, _ = run_controller(scene, client, tmp_path / "crashed", on_event=kill_once_running)
    assert crashed.state == "failed"
    assert "stopped unexpectedly (exit code -9)" in crashed.message
    assert not client.alive

    # The add-on is still usable: the operator starts a fresh server and imports the result.
    assert bpy.ops.animate_anyone.generate() == {"FINISHED"}
    assert generation.ACTIVE.state == "done"
    new_client = backend_client._shared
    assert new_client is not client and new_client.alive
    plane = scene.objects[f"Animate {generation.ACTIVE.paths.root.name}"]
    assert plane["animate_anyone_result"] == str(generation.ACTIVE.paths.root)

    # Disabling the add-on stops the server it started.
    process = new_client.process
    import addon_utils

    addon_utils.disable(ui_scene.ADDON, default_set=True)
    assert process.poll() is not None
    assert not backend_client.shared_is_running()


def test_in_process_runner_gives_the_same_result(scene, tmp_path):
    """With torch importable in Blender's Python, the job runs in a worker thread of Blender itself."""
    from blender_addon.connection import inprocess

    if not inprocess.available():
        pytest.skip("torch is not installed in this Python")
    runner = inprocess.InProcessRunner()
    try:
        controller, stages = run_controller(scene, runner, tmp_path / "job", import_mode="STRIP")
    finally:
        runner.shutdown()
    assert controller.state == "done", controller.message
    assert "decoding" in stages
    assert controller.result["frames"] == 3 and controller.paths.video.is_file()
    assert controller.finish().frame_final_duration == 3


def _drive_modal(controller, events, timeout=180):
    """Feed the Generate operator's modal() the events a window would send; returns (result, reports)."""
    import types
    from types import SimpleNamespace

    op_class = bpy.types.ANIMATE_ANYONE_OT_generate
    reports = []
    op = SimpleNamespace(_controller=controller, _timer=None, report=lambda level, text: reports.append((level, text)))
    op._stop_timer = types.MethodType(op_class._stop_timer, op)
    op._finish = types.MethodType(op_class._finish, op)
    deadline = time.monotonic() + timeout
    events = list(events)
    while time.monotonic() < deadline:
        event = events.pop(0) if events else SimpleNamespace(type="TIMER", value="NOTHING")
        result = op_class.modal(op, bpy.context, event)
        if result not in ({"PASS_THROUGH"}, {"RUNNING_MODAL"}):
            return result, reports
        time.sleep(0.01)
    raise AssertionError("the modal operator did not finish in time")


def test_modal_generate_finishes_and_esc_cancels(scene, tmp_path, backend):
    from types import SimpleNamespace

    options = scene_options.export_options(scene, prefs())
    controller = generation.GenerateController(scene, options, tmp_path / "job", backend, import_mode="STRIP")
    controller.start()
    generation.ACTIVE = controller
    # Other events pass through to Blender while the backend works.
    mouse = SimpleNamespace(type="MOUSEMOVE", value="NOTHING")
    result, reports = _drive_modal(controller, [mouse])
    assert result == {"FINISHED"}
    assert reports[-1][0] == {"INFO"} and "Generated 3 frames" in reports[-1][1] and "imported as" in reports[-1][1]
    assert controller.imported.type == "MOVIE"

    esc = SimpleNamespace(type="ESC", value="PRESS")
    controller = generation.GenerateController(scene, options, tmp_path / "job2", backend, import_mode="STRIP")
    controller.start()
    generation.ACTIVE = controller
    while controller.state == "exporting":  # the job is written: Esc now stops the backend
        controller.poll()
    result, reports = _drive_modal(controller, [esc])
    assert result == {"CANCELLED"}
    assert controller.state == "cancelled"
    assert reports[-1][0] == {"WARNING"} and reports[-1][1].startswith("Cancelled")

    # Esc while the job is still being written: nothing is sent, no folder is left.
    controller = generation.GenerateController(scene, options, tmp_path / "job3", backend, import_mode="STRIP")
    controller.start()
    generation.ACTIVE = controller
    result, reports = _drive_modal(controller, [esc])
    assert result == {"CANCELLED"}
    assert controller.state == "cancelled" and controller.paths is None
    assert reports[-1] == ({"WARNING"}, "Cancelled while writing the job; nothing was generated")
    assert not (tmp_path / "job3").exists()


def test_client_reports_each_death_once_and_can_start_again(tmp_path):
    python = _fake_backend(tmp_path, "sys.stdin.readline()\nprint('boom', file=sys.stderr)\nsys.exit(5)")
    client = backend_client.BackendClient(python)
    for _ in range(2):
        client.start()
        client.run(tmp_path, "job-1")  # held until the hello, which never comes
        event = client.wait_event(timeout=30)
        assert event["type"] == "error" and event["kind"] == backend_client.KIND_DIED
        assert "exit code 5" in event["message"] and "boom" in event["message"]
        assert client.poll_events() == []  # reported once
        assert not client.alive
    client.shutdown()
