"""Generate writes the job in small steps from poll(): Blender stays responsive and Cancel works.

These tests are about writing the job, so the backend is a RecordingRunner that only notes
what it is sent; the real backend runs the job end to end in test_operators.py. The export
budget is 0 (one frame per poll), so that the steps are the same on any machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy
import pytest

import ui_scene
from blender_addon.connection import generation
from blender_addon.ui import scene_options
from blender_addon.errors import AddonError
from blender_addon.export.job_export import JobExport, export_job

FRAMES = 6


class RecordingRunner:
    """Stands in for the backend: records start() and run(), sends no events."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self) -> None:
        self.calls.append(("start",))

    def run(self, job_dir, job_id: str) -> None:
        self.calls.append(("run", Path(job_dir), job_id))

    def cancel(self, job_id: str) -> None:
        self.calls.append(("cancel", job_id))

    def poll_events(self) -> list:
        return []

    @property
    def runs(self) -> list[tuple]:
        return [call for call in self.calls if call[0] == "run"]


@pytest.fixture
def scene(tmp_path):
    scene = ui_scene.build_scene(tmp_path, frames=FRAMES)
    ui_scene.enable_addon()
    ui_scene.configure(scene, tmp_path)
    generation.ACTIVE = None
    scene.frame_set(4)  # the frame the user is on; every run must leave the scene there
    return scene


def options_of(scene):
    return scene_options.export_options(scene, bpy.context.preferences.addons[ui_scene.ADDON].preferences)


def new_controller(scene, job_dir, runner, options=None):
    return generation.GenerateController(
        scene, options or options_of(scene), job_dir, runner, import_mode="NONE", export_budget_s=0
    )


def file_contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_start_returns_before_the_frames_are_projected(scene, tmp_path):
    runner = RecordingRunner()
    job_dir = tmp_path / "job"
    controller = new_controller(scene, job_dir, runner)

    controller.start()
    assert controller.state == "exporting"
    assert (controller.progress.stage, controller.progress.frames_done, controller.progress.frames_total) == (
        "exporting", 0, FRAMES)
    assert controller.progress.headline() == "Writing the job"
    assert not job_dir.exists()
    assert runner.calls == [("start",)]  # the backend starts loading; it has no job yet

    seen = []
    while controller.state == "exporting":
        controller.poll()
        seen.append(controller.progress.frames_done)
        if controller.state == "exporting":
            assert controller.progress.detail() == f"frames {seen[-1]}/{FRAMES}"
            assert not job_dir.exists()  # swapped in only when complete
            assert not runner.runs
    # One frame per poll, then the reference still and the writing (one poll each).
    assert seen[:FRAMES] == list(range(1, FRAMES + 1))
    assert controller.state == "running"
    assert controller.progress.stage == "starting"
    assert runner.runs == [("run", job_dir.resolve(), controller.job_id)]
    assert controller.paths.root == job_dir.resolve()
    assert scene.frame_current == 4

    # The job is the one export_job writes in one go.
    expected = export_job(scene, options_of(scene), tmp_path / "at_once")
    assert json.loads(controller.paths.poses.read_text()) == json.loads(expected.poses.read_text())
    assert len(json.loads(controller.paths.poses.read_text())["frames"]) == FRAMES
    assert controller.paths.reference.read_bytes() == expected.reference.read_bytes()


def test_cancel_while_exporting_sends_nothing_and_keeps_the_old_job(scene, tmp_path):
    job_dir = tmp_path / "job"
    small = options_of(scene)
    small.frame_end = 2
    export_job(scene, small, job_dir)  # an earlier job at the same place
    before = file_contents(job_dir)

    runner = RecordingRunner()
    controller = new_controller(scene, job_dir, runner)
    controller.start()
    generation.ACTIVE = controller
    controller.poll()
    controller.poll()
    assert controller.progress.frames_done == 2
    assert scene.frame_current != 4  # the export is on its frames

    assert bpy.ops.animate_anyone.cancel_generate() == {"FINISHED"}  # the panel's Cancel button
    assert controller.state == "cancelled" and controller.finished
    assert controller.message == "Cancelled while writing the job; nothing was generated"
    assert scene.frame_current == 4
    assert not runner.runs
    assert file_contents(job_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders
    assert controller.poll() == "cancelled"  # polling after a cancel does nothing more
    assert not runner.runs
    assert controller.finish() is None


def test_cancel_before_anything_is_written_leaves_no_folder(scene, tmp_path):
    runner = RecordingRunner()
    job_dir = tmp_path / "out" / "new_job"
    controller = new_controller(scene, job_dir, runner)
    controller.start()
    controller.poll()
    controller.cancel()
    assert controller.state == "cancelled"
    assert not job_dir.exists() and not job_dir.parent.exists()
    assert not runner.runs
    assert scene.frame_current == 4


def test_an_error_while_exporting_fails_the_run(scene, tmp_path):
    runner = RecordingRunner()
    options = options_of(scene)
    options.reference, options.image_path = "image", str(tmp_path / "missing.png")
    controller = new_controller(scene, tmp_path / "job", runner, options)
    controller.start()
    assert controller.wait(timeout=60) == "failed"
    assert controller.error_kind == "export"
    assert "missing.png does not exist" in controller.message
    assert controller.progress.frames_done == FRAMES  # it failed after the projection, at the reference
    assert not runner.runs
    assert not (tmp_path / "job").exists()
    assert scene.frame_current == 4
    assert controller.finish() is None


def test_armature_deleted_while_exporting_fails_the_run(scene, tmp_path):
    runner = RecordingRunner()
    controller = new_controller(scene, tmp_path / "job", runner)
    controller.start()
    controller.poll()
    bpy.data.objects.remove(scene.objects["Hero"])  # what a user may do between two timer ticks
    controller.poll()
    assert controller.state == "failed"
    assert "was removed (or undone) while the job was being written" in controller.message
    assert not runner.runs
    assert not (tmp_path / "job").exists()
    assert scene.frame_current == 4


def test_a_scene_that_cannot_work_fails_at_start(scene, tmp_path):
    """Unmapped body bones are known before any frame is evaluated: start() says so, nothing runs."""
    runner = RecordingRunner()
    for item in scene.animate_anyone.bone_map:
        if item.group == "body" and item.keypoint == "left_wrist":
            item.bone = ""  # the row cleared in the Bone Mapping table
    controller = new_controller(scene, tmp_path / "job", runner)
    with pytest.raises(AddonError, match="left_wrist"):
        controller.start()
    assert controller.state == "new"
    assert runner.calls == []
    assert not (tmp_path / "job").exists()


def test_job_export_steps_report_progress_and_restore_the_frame(scene, tmp_path):
    calls = []
    export = JobExport(scene, options_of(scene), tmp_path / "job", progress=lambda done, total: calls.append(done))
    assert export.progress == (0, FRAMES)
    steps = 0
    while not export.step(budget_s=0):
        steps += 1
        assert export.progress[0] == min(steps, FRAMES)
    assert steps == FRAMES + 1  # a step per frame, one for the reference still, the last writes
    assert calls == list(range(1, FRAMES + 1))
    assert export.phase == "done" and export.paths.settings.is_file()
    assert scene.frame_current == 4
    with pytest.raises(AddonError):
        JobExport(scene, options_of(scene), export.paths.settings)  # a file, not a folder
