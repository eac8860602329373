"""The command-line script and the batch module, as real subprocesses on saved .blend files.

They run the tiny untrained pipeline at 64x64 for two frames and one step; each backend
run is a fresh Python that imports torch, so there are only two of them here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.commands import blender_command, cli, demo_scene  # noqa: E402
from blender_addon.connection import runner as backend_runner  # noqa: E402
from blender_addon.errors import AddonError  # noqa: E402
from blender_addon.export.job_export import ExportOptions, export_job  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny", "--frames", "1-2", "--steps", "1", "--engine", "CYCLES", "--size", "64x64", "-q"]


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    # The environment passes through: where Blender's Python has no torch (the bpy 4.2 run),
    # ANIMATE_BACKEND_PYTHON names the backend's interpreter, as it would on a render farm.
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def save_demo_shot(path: Path, camera: bool = True) -> Path:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = demo_scene.build_demo_scene(width=64, height=64, frames=3)
    if not camera:
        bpy.data.objects.remove(scene.camera)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def stderr_lines(process: subprocess.CompletedProcess) -> list[str]:
    return [line for line in process.stderr.splitlines() if line.strip()]


def test_cli_runs_a_saved_shot_end_to_end(tmp_path):
    shot = save_demo_shot(tmp_path / "sh010.blend")
    job = tmp_path / "renders" / "sh010"

    process = run(["-m", "blender_addon.cli", str(shot), "--", "--out", str(job), *TINY, "--import", "plane", "--save"])

    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.strip().splitlines()[-1] == f"done: {job / 'out' / 'video.mp4'} (UNTRAINED model)"
    result = json.loads((job / "out" / "result.json").read_text())
    assert result["frames"] == 2 and result["untrained"] and (job / "out" / "video.mp4").stat().st_size > 0
    settings = json.loads((job / "job.json").read_text())
    assert settings["provenance"]["blend_file"] == str(shot) and settings["steps"] == 1
    # --save kept the imported plane in the shot's file.
    bpy.ops.wm.open_mainfile(filepath=str(shot))
    planes = [obj for obj in bpy.data.objects if obj.get("animate_anyone_result")]
    assert len(planes) == 1 and "UNTRAINED" in planes[0].name


def test_cli_failures_exit_nonzero_with_one_line(tmp_path):
    shot = save_demo_shot(tmp_path / "shot.blend")
    process = run(["-m", "blender_addon.cli", str(shot), "--", "--out", str(tmp_path / "job"), *TINY,
                   "--armature", "Nobody"])
    assert process.returncode == 1
    assert stderr_lines(process)[-1] == "error: there is no object called 'Nobody'; pick the character's armature"
    assert not (tmp_path / "job").exists()

    # Run as a file, the way `blender -b shot.blend -P cli.py -- ...` runs it: no package around
    # it. The bpy module's start-up file (cube, camera, light) has no armature.
    process = run([str(REPO / "blender_addon" / "cli.py"), "--", "--out", str(tmp_path / "job"), "--model", "tiny"])
    assert process.returncode == 1
    last = stderr_lines(process)[-1]
    assert last.startswith("error: scene 'Scene' has no armature") and "pick its armature" in last

    process = run(["-m", "blender_addon.cli", str(tmp_path / "nowhere.blend"), "--", "--out", str(tmp_path / "j")])
    assert process.returncode == 1 and "does not exist" in stderr_lines(process)[-1]
    process = run(["-m", "blender_addon.cli", str(shot), "--", "--out", str(tmp_path / "j"), "--size", "big"])
    assert process.returncode == 2 and "size must look like 512x768" in process.stderr


def test_cli_in_process_needs_a_model(tmp_path):
    shot = save_demo_shot(tmp_path / "shot.blend")
    assert cli.main([str(shot), "--out", str(tmp_path / "job"), "--export-only", "--model", "tiny", "--frames", "1-2",
                     "--size", "64x64", "--engine", "CYCLES", "--map", "left_wrist=upper_arm.L@tail"]) == 0
    settings = json.loads((tmp_path / "job" / "job.json").read_text())
    assert settings["frame_end"] == 2 and not (tmp_path / "job" / "out").exists()
    # --map moved the left wrist keypoint to the upper arm's tail: onto the elbow.
    from blender_addon.export import projection
    from pose_bridge.job import read_job
    from pose_bridge.keypoints import BODY_INDEX

    scene = bpy.context.scene
    expected = projection.project_sequence(scene, bpy.data.objects[demo_scene.ARMATURE], scene.camera, 1, 1, 64, 64,
                                           overrides={"left_wrist": ("upper_arm.L", "tail")})
    wrist = BODY_INDEX["left_wrist"]
    written = read_job(tmp_path / "job").poses[0].body
    np.testing.assert_allclose(written[wrist], expected.poses[0].body[wrist], atol=1e-3)
    np.testing.assert_allclose(written[wrist], written[BODY_INDEX["left_elbow"]], atol=1e-3)
    assert cli.main([str(shot), "--out", str(tmp_path / "job2")]) == 1  # no --model, no preferences
    assert not (tmp_path / "job2").exists()


def test_batch_runs_a_shot_list_skips_done_shots_and_reports_failures(tmp_path):
    good = save_demo_shot(tmp_path / "sh010.blend")
    no_camera = save_demo_shot(tmp_path / "sh020.blend", camera=False)
    out = tmp_path / "batch"
    args = ["-m", "blender_addon.commands.batch", str(good), str(no_camera), str(tmp_path / "sh030.blend"),
            "--out", str(out), *TINY, "--import", "plane", "--save"]

    first = run(args)

    assert first.returncode == 1, first.stderr[-2000:]
    summary = first.stdout.strip().splitlines()[-4:]
    assert summary[0].startswith("sh010.blend") and " done " in summary[0] and "video.mp4" in summary[0]
    assert summary[1].startswith("sh020.blend") and "FAILED" in summary[1] and "no active camera" in summary[1]
    assert summary[2].startswith("sh030.blend") and "FAILED" in summary[2] and "does not exist" in summary[2]
    assert summary[3] == "3 shot(s): 1 done, 0 skipped, 2 failed"
    assert (out / "sh010" / "out" / "video.mp4").is_file()
    assert not (out / "sh020").exists()

    # Again: the finished shot (saved with its imported plane since) is skipped, no backend runs.
    second = run(args)
    assert second.returncode == 1
    assert "sh010.blend  skipped" in second.stdout and "backend" not in second.stderr
    assert second.stdout.strip().splitlines()[-1] == "3 shot(s): 0 done, 1 skipped, 2 failed"


@pytest.fixture()
def job_dir(tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = demo_scene.build_demo_scene(width=64, height=64, frames=2)
    return export_job(scene, ExportOptions(engine="CYCLES"), tmp_path / "job").root


def fake_python(path: Path, script: str) -> str:
    """An executable that stands in for the backend's interpreter."""
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_backend_runner_streams_the_log_and_reports_the_backends_error(job_dir, tmp_path):
    failing = fake_python(tmp_path / "failing", (
        'echo "loading: model /models/aa" >&2\n'
        'echo "error: /models/aa has no model_index.json; convert the weights first" >&2\n'
        "exit 2\n"
    ))
    lines: list[str] = []
    with pytest.raises(AddonError) as error:
        backend_runner.run_job(job_dir, failing, on_line=lines.append)
    assert str(error.value).endswith("/models/aa has no model_index.json; convert the weights first")
    assert lines == ["loading: model /models/aa", "error: /models/aa has no model_index.json; convert the weights first"]

    silent = fake_python(tmp_path / "silent", 'echo "$@" >&2\nexit 0\n')
    with pytest.raises(AddonError, match="result.json cannot be read"):
        backend_runner.run_job(job_dir, silent, on_line=lines.append)
    assert lines[-1] == f"-m animate_backend run {job_dir}"

    with pytest.raises(AddonError, match="not a job folder"):
        backend_runner.run_job(tmp_path, failing)


def test_the_backend_python_is_found_in_order(tmp_path, monkeypatch):
    monkeypatch.delenv(backend_runner.PYTHON_ENV_VAR, raising=False)
    if backend_runner._backend_importable_here():  # the project's environment: bpy, torch, animate_backend
        assert backend_runner.find_backend_python() == sys.executable
    else:  # a Blender without torch and nothing configured
        with pytest.raises(AddonError, match="no backend Python found"):
            backend_runner.find_backend_python()
    fake = fake_python(tmp_path / "python", "exit 0\n")
    monkeypatch.setenv(backend_runner.PYTHON_ENV_VAR, fake)
    assert backend_runner.find_backend_python() == fake
    assert backend_runner.find_backend_python(sys.executable) == sys.executable
    monkeypatch.setenv(backend_runner.PYTHON_ENV_VAR, str(tmp_path / "gone" / "python"))
    with pytest.raises(AddonError, match="does not exist"):
        backend_runner.find_backend_python()


def test_the_demo_runs_the_main_job_with_our_demo_model(tmp_path):
    """`make demo`: the committed demo model by default (here 2 frames, 1 step, to be quick)."""
    from blender_addon.commands.demo import DEMO_MODEL, DEMO_MODEL_LABEL

    out = tmp_path / "demo_output"
    process = run(["-m", "blender_addon.commands.demo", "--out", str(out), "--frames", "2", "--steps", "1", "-q"])

    assert process.returncode == 0, process.stderr[-2000:]
    video = out / "job" / "out" / "video.mp4"
    assert video.stat().st_size > 0 and sorted(p.name for p in out.iterdir()) == ["demo.blend", "job", "preview.png"]
    settings = json.loads((out / "job" / "job.json").read_text())
    assert (settings["model"], settings["width"], settings["height"]) == (str(DEMO_MODEL), 64, 64)
    summary = process.stdout
    assert f"video     {video}" in summary and DEMO_MODEL_LABEL in summary and "UNTRAINED" not in summary
    # The preview: reference + 2 frames wide; skeleton, rendered truth and generated rows; 4x larger.
    from pose_bridge.image_io import read_image

    assert read_image(out / "preview.png").shape == (3 * 64 * 4, 3 * 64 * 4, 3)
    # The saved file holds the character, its animation and the imported result, named for the model.
    bpy.ops.wm.open_mainfile(filepath=str(out / "demo.blend"))
    rig = bpy.data.objects[demo_scene.ARMATURE]
    assert rig.animation_data.action is not None
    planes = [obj for obj in bpy.data.objects if obj.get("animate_anyone_result")]
    assert len(planes) == 1 and DEMO_MODEL_LABEL in planes[0].name and planes[0].parent == bpy.context.scene.camera


def test_cli_can_start_from_the_settings_saved_in_the_animate_tab(tmp_path):
    import blender_addon
    from blender_addon.export import projection
    from pose_bridge.job import read_job
    from pose_bridge.keypoints import BODY_INDEX

    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    try:
        scene = demo_scene.build_demo_scene(width=96, height=128, frames=4)
        rig = bpy.data.objects[demo_scene.ARMATURE]
        settings = scene.animate_anyone
        settings.armature = rig  # detects the preset and fills the mapping table
        settings.use_scene_range, settings.frame_start, settings.frame_end = False, 2, 3
        settings.use_render_size, settings.width, settings.height = False, 64, 64
        settings.reference_engine, settings.steps, settings.seed = "CYCLES", 3, 11
        row = next(item for item in settings.bone_map if item.keypoint == "left_wrist")
        row.bone, row.end = "forearm.L", "tail"
        shot = tmp_path / "panel.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(shot))
    finally:
        blender_addon.unregister()
    bpy.ops.wm.read_factory_settings(use_empty=True)

    job_dir = tmp_path / "job"
    code = cli.main([str(shot), "--out", str(job_dir), "--scene-settings", "--export-only", "--model", "tiny",
                     "--seed", "5"])
    try:
        assert code == 0
        job = read_job(job_dir)
        s = job.settings
        # From the tab: range, size, steps, engine; from the command line: the seed.
        assert (s.frame_start, s.frame_end, s.width, s.height, s.steps, s.seed) == (2, 3, 64, 64, 3, 5)
        assert s.provenance["reference"]["engine"] == "CYCLES"
        scene = bpy.context.scene
        expected = projection.project_sequence(
            scene, bpy.data.objects[demo_scene.ARMATURE], scene.camera, 2, 3, 64, 64,
            overrides={"left_wrist": ("forearm.L", "tail")},
        )
        np.testing.assert_allclose(job.poses[0].body[BODY_INDEX["left_wrist"]],
                                   expected.poses[0].body[BODY_INDEX["left_wrist"]], atol=1e-3)
    finally:
        blender_addon.unregister()  # cli.main registered the add-on to read the tab's settings


@pytest.mark.parametrize("option, value", [
    ("--steps", "0"), ("--guidance", "nan"), ("--guidance", "-2"), ("--seed", "-1"),
    ("--context-frames", "0"), ("--context-overlap", "-1"), ("--size", "0x64"), ("--size", "64x99999"),
])
def test_cli_numeric_options_are_checked_and_named(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--out", "job", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--takes", "0"), ("--frames", "-3"), ("--samples", "0"), ("--random-fraction", "1.5"),
    ("--max-angle", "nan"), ("--azimuth", "nan,3"), ("--seed", "-1"),
])
def test_dataset_numeric_options_are_checked_and_named(option, value, capsys):
    from blender_addon.commands import dataset

    with pytest.raises(SystemExit):
        dataset.build_parser().parse_args(["character.blend", "--out", "data", option, value])
    assert f"argument {option}" in capsys.readouterr().err


def test_blender_command_runs_the_same_commands(tmp_path, capsys):
    """`blender -c animate_anyone generate SHOT --out DIR ...` (Blender 4.2+) is the add-on's command line;
    Blender hands the callback the arguments after the command id."""
    shot = save_demo_shot(tmp_path / "sh010.blend")
    job = tmp_path / "job"
    argv = ["generate", str(shot), "--out", str(job), "--export-only", "--model", "tiny", "--frames", "1-2",
            "--size", "64x64", "--engine", "WORKBENCH", "--seed", "5", "-q"]
    assert blender_command.execute(argv) == 0
    settings = json.loads((job / "job.json").read_text())
    assert (settings["seed"], settings["frame_end"], settings["width"]) == (5, 2, 64)

    assert blender_command.execute(["render-everything"]) == 2
    assert "unknown command 'render-everything'" in capsys.readouterr().err
    assert blender_command.execute(["generate", "--help"]) == 0  # argparse's exit becomes the return code
    assert "--guidance" in capsys.readouterr().out
    assert blender_command.execute(["generate", str(shot), "--out", str(job), "--steps", "0"]) == 2
