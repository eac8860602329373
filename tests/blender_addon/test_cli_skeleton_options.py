"""The command line's skeleton options: --export-only needs no model, --neck picks the neck rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.commands import cli, demo_scene  # noqa: E402

from blender_addon.export import projection  # noqa: E402
from pose_bridge.job import read_job  # noqa: E402
from pose_bridge.keypoints import BODY_INDEX  # noqa: E402


@pytest.fixture
def shot(tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    demo_scene.build_demo_scene(width=64, height=64, frames=2)
    path = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


ARGS = ["--frames", "1-1", "--size", "64x64", "--engine", "WORKBENCH", "-q"]


def test_export_only_needs_no_model_and_the_neck_is_dwposes(shot, tmp_path):
    assert cli.main([str(shot), "--out", str(tmp_path / "job"), "--export-only", *ARGS]) == 0
    job = read_job(tmp_path / "job")
    assert job.settings.model  # a valid job folder (the untrained pipeline, with a warning on stderr)
    assert job.settings.provenance["neck"] == "shoulders"
    body = job.poses[0].body
    shoulders = body[[BODY_INDEX["right_shoulder"], BODY_INDEX["left_shoulder"]]]
    np.testing.assert_allclose(body[BODY_INDEX["neck"], :2], shoulders[:, :2].mean(axis=0), atol=1e-3)
    assert not (tmp_path / "job" / "out").exists()


def test_neck_bone_option(shot, tmp_path):
    assert cli.main([str(shot), "--out", str(tmp_path / "job"), "--export-only", "--neck", "bone", *ARGS]) == 0
    job = read_job(tmp_path / "job")
    assert json.loads((tmp_path / "job" / "job.json").read_text())["provenance"]["neck"] == "bone"
    scene = bpy.context.scene
    rig = bpy.data.objects[demo_scene.ARMATURE]
    expected = projection.project_sequence(scene, rig, scene.camera, 1, 1, 64, 64, neck="bone")
    neck = BODY_INDEX["neck"]
    np.testing.assert_allclose(job.poses[0].body[neck], expected.poses[0].body[neck], atol=1e-3)
    # The demo rig's neck bone (spine.004) starts above its shoulder line.
    assert job.poses[0].body[neck, 1] < job.poses[0].body[BODY_INDEX["right_shoulder"], 1] - 0.5
    with pytest.raises(SystemExit):
        cli.main([str(shot), "--out", str(tmp_path / "job2"), "--neck", "chin", *ARGS])
