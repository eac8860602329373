"""Importing a job's result: a plane that fills the camera frame, a sequencer strip, a compositor node.

The job folders here are made directly (job.json, a 3-frame mp4 or frame files), so these
tests need no backend.
"""

from __future__ import annotations

import json
import math

import bpy
import numpy as np
import pytest
from bpy_extras.object_utils import world_to_camera_view

from blender_addon.results import importing
from blender_addon.errors import AddonError
from pose_bridge.image_io import write_png, write_video
from pose_bridge.job import JobPaths, JobSettings, write_json_atomic, write_settings

FIRST_FRAME = 5
FRAMES = 3


def make_finished_job(job_dir, video=True, frames=FRAMES):
    """A job folder as the backend leaves it: job.json, out/frames/*.png and (when video) out/video.mp4."""
    settings = JobSettings(model="tiny", width=64, height=48, fps=24.0, frame_start=FIRST_FRAME,
                           frame_end=FIRST_FRAME + FRAMES - 1)
    write_settings(job_dir, settings)
    paths = JobPaths(job_dir)
    images = [np.full((48, 64, 3), 60 * i, dtype=np.uint8) for i in range(frames)]
    for i, rgb in enumerate(images):
        write_png(paths.frame(i), rgb)
    if video:
        write_video(paths.video, images, 24.0)
        write_json_atomic(paths.result, {"video": "out/video.mp4", "frames": frames})
    return paths


@pytest.fixture
def scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def add_camera(scene, *, kind="PERSP", location=(0.0, -8.0, 1.5), rotation=(math.radians(80), 0.0, 0.3)):
    data = bpy.data.cameras.new("Cam")
    data.type = kind
    obj = bpy.data.objects.new("Cam", data)
    obj.location = location
    obj.rotation_euler = rotation
    scene.collection.objects.link(obj)
    scene.camera = obj
    return obj


CAMERA_CASES = {
    "perspective landscape": dict(res=(640, 480)),
    "perspective portrait, vertical fit": dict(res=(480, 720), sensor_fit="VERTICAL"),
    "perspective, lens shift and pixel aspect": dict(res=(800, 400), shift=(0.15, -0.1), pixel_aspect=(1.0, 1.5)),
    "perspective, scaled camera": dict(res=(512, 512), scale=(2.0, 2.0, 2.0), lens=24.0),
    "orthographic": dict(res=(600, 400), kind="ORTHO", ortho_scale=5.0),
    "orthographic portrait, horizontal fit": dict(res=(400, 600), kind="ORTHO", sensor_fit="HORIZONTAL"),
}


@pytest.mark.parametrize("case", list(CAMERA_CASES), ids=list(CAMERA_CASES))
def test_plane_fills_the_camera_frame(scene, tmp_path, case):
    spec = CAMERA_CASES[case]
    scene.render.resolution_x, scene.render.resolution_y = spec["res"]
    scene.render.resolution_percentage = 100
    if "pixel_aspect" in spec:
        scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = spec["pixel_aspect"]
    camera = add_camera(scene, kind=spec.get("kind", "PERSP"))
    camera.data.sensor_fit = spec.get("sensor_fit", "AUTO")
    camera.data.shift_x, camera.data.shift_y = spec.get("shift", (0.0, 0.0))
    camera.data.lens = spec.get("lens", 50.0)
    camera.data.ortho_scale = spec.get("ortho_scale", 6.0)
    camera.scale = spec.get("scale", (1.0, 1.0, 1.0))
    paths = make_finished_job(tmp_path / "job")

    plane = importing.import_result(scene, paths.root, "PLANE", camera=camera, distance=3.0)
    bpy.context.view_layer.update()

    corners = [world_to_camera_view(scene, camera, plane.matrix_world @ v.co) for v in plane.data.vertices]
    uv = sorted((round(c.x, 4), round(c.y, 4)) for c in corners)
    assert uv == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    for c in corners:
        assert c.z == pytest.approx(3.0, abs=1e-4)  # at the asked distance in front of the camera
    # It faces the camera: its normal points from the plane towards the camera.
    normal = (plane.matrix_world.to_3x3() @ plane.data.polygons[0].normal).normalized()
    to_camera = (camera.matrix_world.translation - plane.matrix_world @ plane.data.polygons[0].center).normalized()
    assert normal.dot(to_camera) > 0.5
    assert plane.parent == camera


def test_plane_plays_the_movie_from_the_jobs_first_frame(scene, tmp_path):
    camera = add_camera(scene)
    paths = make_finished_job(tmp_path / "job")
    plane = importing.import_result(scene, paths.root, "PLANE")  # default camera: the scene's

    material = plane.data.materials[0]
    texture = next(n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert texture.image.source == "MOVIE"
    assert bpy.path.abspath(texture.image.filepath) == str(paths.video)
    assert texture.image_user.frame_start == FIRST_FRAME
    assert texture.image_user.frame_duration == FRAMES
    assert texture.image_user.use_auto_refresh
    emission = next(n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeEmission")
    assert emission.inputs["Color"].links[0].from_node == texture
    assert plane["animate_anyone_result"] == str(paths.root)
    assert plane.parent == camera
    # Importing twice reuses the movie instead of loading it again.
    again = importing.import_result(scene, paths.root, "PLANE")
    texture2 = next(n for n in again.data.materials[0].node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert texture2.image == texture.image


def _strips(scene):
    editor = scene.sequence_editor
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def add_color_strip(strips, name, channel, start, end):
    try:  # 5.0: a length
        return strips.new_effect(name, "COLOR", channel, frame_start=start, length=end - start)
    except TypeError:  # 4.x: an end frame
        return strips.new_effect(name, "COLOR", channel, frame_start=start, frame_end=end)


def test_strip_goes_on_a_free_channel_at_the_first_frame(scene, tmp_path):
    paths = make_finished_job(tmp_path / "job")
    editor = scene.sequence_editor_create()
    strips = _strips(scene)
    # Channel 1 is busy over the job's frames; channel 2 is busy only long after them.
    add_color_strip(strips, "busy", 1, 1, 20)
    add_color_strip(strips, "later", 2, 100, 120)

    strip = importing.import_result(scene, paths.root, "STRIP")
    assert strip.type == "MOVIE"
    assert strip.channel == 2
    assert strip.frame_final_start == FIRST_FRAME
    assert strip.frame_final_duration == FRAMES
    assert bpy.path.abspath(strip.filepath) == str(paths.video)
    assert editor == scene.sequence_editor

    second = importing.import_result(scene, paths.root, "STRIP")
    assert second.channel == 3  # channel 2 now holds the first import


def test_compositor_node_uses_the_version_api(scene, tmp_path):
    paths = make_finished_job(tmp_path / "job")
    node = importing.import_result(scene, paths.root, "COMPOSITOR")
    assert node.bl_idname == "CompositorNodeMovieClip"
    assert node.clip.frame_start == FIRST_FRAME
    assert bpy.path.abspath(node.clip.filepath) == str(paths.video)
    if hasattr(scene, "compositing_node_group"):  # Blender 5.0
        tree = scene.compositing_node_group
        assert tree is not None and node.name in tree.nodes
        output = next(n for n in tree.nodes if n.bl_idname == "NodeGroupOutput")
        assert output.inputs[0].links[0].from_node == node
        # A second import adds a node to the same tree and leaves the user's links alone.
        second = importing.import_result(scene, paths.root, "COMPOSITOR")
        assert second.name in tree.nodes and scene.compositing_node_group == tree
        assert output.inputs[0].links[0].from_node == node
    else:  # 4.x
        assert scene.use_nodes and node.name in scene.node_tree.nodes


def test_cancelled_job_imports_its_finished_frames(scene, tmp_path):
    add_camera(scene)
    paths = make_finished_job(tmp_path / "job", video=False, frames=2)
    media = importing.job_media(paths.root)
    assert media.video is None and media.frame_count == 2

    strip = importing.import_result(scene, paths.root, "STRIP")
    assert strip.type == "IMAGE"
    assert [e.filename for e in strip.elements] == ["0001.png", "0002.png"]
    assert strip.frame_final_start == FIRST_FRAME and strip.frame_final_duration == 2

    plane = importing.import_result(scene, paths.root, "PLANE")
    texture = next(n for n in plane.data.materials[0].node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert texture.image.source == "SEQUENCE"
    assert texture.image_user.frame_duration == 2


def test_job_without_result_says_what_to_do(scene, tmp_path):
    write_settings(tmp_path / "job", JobSettings(width=64, height=64, frame_start=1, frame_end=2))
    with pytest.raises(AddonError, match="no result yet"):
        importing.import_result(scene, tmp_path / "job", "STRIP")


def test_plane_without_camera_is_refused(scene, tmp_path):
    paths = make_finished_job(tmp_path / "job")
    with pytest.raises(AddonError, match="needs a camera"):
        importing.import_result(scene, paths.root, "PLANE")
    assert not [o for o in bpy.data.objects]  # nothing half-made


def test_none_imports_nothing(scene, tmp_path):
    paths = make_finished_job(tmp_path / "job")
    assert importing.import_result(scene, paths.root, "NONE") is None
    assert json.loads(paths.result.read_text())["video"] == "out/video.mp4"


def test_import_result_operator(scene, tmp_path):
    import blender_addon

    blender_addon.register()
    paths = make_finished_job(tmp_path / "job")
    assert bpy.ops.animate_anyone.import_result(directory=str(paths.root), mode="STRIP") == {"FINISHED"}
    assert [s.name for s in _strips(scene)] == ["Animate job"]
    with pytest.raises(RuntimeError, match="needs a camera"):
        bpy.ops.animate_anyone.import_result(directory=str(paths.root), mode="PLANE")
