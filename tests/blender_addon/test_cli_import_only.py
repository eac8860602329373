"""The command line's farm half: --import-only brings a job generated elsewhere into the shot,
--save-as saves the result beside the shot and leaves the shot itself untouched.

The job's result is made here (two coloured frames and their video), no backend is run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.commands import cli, demo_scene  # noqa: E402
from pose_bridge.image_io import write_png, write_video  # noqa: E402
from pose_bridge.job import JobPaths, JobSettings, write_settings  # noqa: E402


def save_demo_shot(path: Path) -> Path:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    demo_scene.build_demo_scene(width=64, height=64, frames=2)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def generated_job(job_dir: Path) -> None:
    """A job folder as `python -m animate_backend run` leaves it (only what importing reads)."""
    write_settings(job_dir, JobSettings(width=64, height=64, frame_start=1, frame_end=2, fps=12))
    paths = JobPaths(job_dir)
    frames = [np.full((64, 64, 3), value, dtype=np.uint8) for value in (40, 200)]
    for i, frame in enumerate(frames):
        write_png(paths.frame(i), frame)
    write_video(paths.video, frames, 12)
    paths.result.write_text(json.dumps({"frames": 2, "video": "out/video.mp4", "untrained": True}))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_only_saves_the_result_beside_the_shot(tmp_path):
    shot = save_demo_shot(tmp_path / "sh010.blend")
    before = sha256(shot)
    job = tmp_path / "jobs" / "sh010"
    generated_job(job)
    copy = tmp_path / "sh010_animate.blend"

    code = cli.main([str(shot), "--out", str(job), "--import-only", "--import", "plane", "--save-as", str(copy), "-q"])

    assert code == 0
    assert sha256(shot) == before  # the artist's file is not touched
    bpy.ops.wm.open_mainfile(filepath=str(copy))
    planes = [obj for obj in bpy.data.objects if obj.get("animate_anyone_result")]
    assert len(planes) == 1 and "UNTRAINED" in planes[0].name


def test_import_only_says_what_is_missing(tmp_path, capsys):
    shot = save_demo_shot(tmp_path / "sh010.blend")

    assert cli.main([str(shot), "--out", str(tmp_path / "nothing"), "--import-only", "--import", "plane"]) == 1
    assert "result.json is missing or unreadable: generate the job first" in capsys.readouterr().err
    assert cli.main([str(shot), "--out", str(tmp_path / "nothing"), "--import-only"]) == 1
    assert "--import-only needs --import plane, strip or compositor" in capsys.readouterr().err
