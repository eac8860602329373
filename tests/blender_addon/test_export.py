"""Writing job folders from a scene: contents, sizes, the reference still, safety, errors."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.commands import demo_scene  # noqa: E402
from blender_addon.export import projection, reference  # noqa: E402
from blender_addon.errors import AddonError  # noqa: E402
from blender_addon.export.job_export import ExportOptions, export_job, output_size, preview_skeleton  # noqa: E402
from pose_bridge import drawing, image_io, openpose_json  # noqa: E402
from pose_bridge.job import read_job  # noqa: E402
from pose_bridge.settings import JobSettings  # noqa: E402
from pose_bridge.keypoints import BODY_INDEX  # noqa: E402


@pytest.fixture()
def scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return demo_scene.build_demo_scene(width=64, height=96, frames=4)


def options(**changes) -> ExportOptions:
    """ExportOptions for the demo scene; changes name either an export option or a job setting."""
    job = JobSettings(model="tiny", steps=2, seed=7)
    base = dict(engine="CYCLES", frame_start=1, frame_end=3)
    for name, value in changes.items():
        if name in {f.name for f in fields(ExportOptions)}:
            base[name] = value
        else:
            setattr(job, name, value)
    return ExportOptions(**base, job=job)


def test_export_writes_a_complete_job_folder(scene, tmp_path):
    job_dir = tmp_path / "shots" / "sh010"
    calls = []
    paths = export_job(scene, options(guidance_scale=2.0, context_frames=8, context_overlap=2, context_schedule="loop"), job_dir,
                       progress=lambda done, total: calls.append((done, total)))

    assert paths.root == job_dir.resolve()
    assert calls == [(1, 3), (2, 3), (3, 3)]
    names = sorted(p.name for p in job_dir.iterdir())
    assert names == ["job.json", "poses", "poses.json", "reference.png", "reference_pose.json"]
    assert sorted(p.name for p in paths.skeletons.iterdir()) == ["0001.png", "0002.png", "0003.png"]
    assert not [p for p in job_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left

    job = read_job(job_dir)
    s = job.settings
    assert (s.width, s.height, s.frame_start, s.frame_end, s.fps) == (64, 96, 1, 3, 12.0)
    assert (s.model, s.steps, s.seed, s.guidance_scale, s.context_frames, s.context_overlap) == ("tiny", 2, 7, 2.0, 8, 2)
    assert s.context_schedule == "loop"
    prov = s.provenance
    assert prov["scene"] == scene.name and prov["armature"] == demo_scene.ARMATURE
    assert prov["camera"] == scene.camera.name and prov["preset"] == "rigify_meta"
    assert prov["blender_version"] == bpy.app.version_string and prov["addon_version"]
    assert prov["face_mesh"] == demo_scene.CHARACTER and prov["unmapped"] == []
    assert prov["reference"] == {"mode": "render", "frame": 1, "engine": "CYCLES"}

    # poses.json holds exactly the projection of those frames, on the output canvas.
    expected = projection.project_sequence(scene, bpy.data.objects[demo_scene.ARMATURE], scene.camera, 1, 3, 64, 96)
    assert len(job.poses) == 3 and job.poses.canvas_width == 64 and job.poses.canvas_height == 96
    for written, projected in zip(job.poses, expected.poses):
        np.testing.assert_allclose(written.body, projected.body, atol=1e-3)
        np.testing.assert_allclose(written.face, projected.face, atol=1e-3)
    # The reference still is a render of the character at the output size, not an empty frame.
    assert job.reference.shape == (96, 64, 3)
    assert job.reference.std() > 5
    reference_pose = openpose_json.read_frame(job_dir / "reference_pose.json")
    np.testing.assert_allclose(reference_pose.body, job.poses[0].body, atol=1e-3)
    skeleton = image_io.read_image(paths.skeletons / "0002.png")
    assert skeleton.shape == (96, 64, 3) and skeleton.any()


def test_default_size_is_the_render_size_with_its_percentage_rounded_to_8(scene, tmp_path):
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 250, 190, 50
    width, height, note = output_size(scene)
    assert (width, height) == (128, 96)
    assert "125x95" in note and "128x96" in note
    scene.render.resolution_percentage = 100
    scene.render.resolution_x, scene.render.resolution_y = 128, 96
    assert output_size(scene) == (128, 96, "")

    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 250, 190, 50
    paths = export_job(scene, options(frame_end=1), tmp_path / "job")
    job = read_job(paths.root)
    assert (job.settings.width, job.settings.height) == (128, 96)
    assert job.poses.canvas_width == 128 and job.reference.shape == (96, 128, 3)
    assert "rounded" in job.settings.provenance["size_note"]
    # The scene's own settings are untouched by the export.
    assert (scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage) == (250, 190, 50)


def test_a_new_export_replaces_the_addons_files_and_never_a_users_folder(scene, tmp_path):
    job_dir = tmp_path / "job"
    export_job(scene, options(frame_end=3), job_dir)
    (job_dir / "out").mkdir()
    (job_dir / "out" / "frames").mkdir()
    (job_dir / "out" / "frames" / "0001.png").write_bytes(b"a frame")
    (job_dir / "out" / "result.json").write_text("{}")
    export_job(scene, options(frame_end=2, reference="image", image_path=str(job_dir / "reference.png")), job_dir)
    assert sorted(p.name for p in (job_dir / "poses").iterdir()) == ["0001.png", "0002.png"]
    assert (job_dir / "out" / "frames" / "0001.png").read_bytes() == b"a frame", "the backend's to judge"
    assert not (job_dir / "out" / "result.json").exists(), "the old run no longer says this job is finished"
    assert not (job_dir / "reference_pose.json").exists(), "the old export's skeleton went with it"
    assert [p.name for p in tmp_path.iterdir()] == ["job"]

    # A failed export leaves the previous job exactly as it was.
    before = (job_dir / "job.json").read_text()
    with pytest.raises(AddonError, match="has no frames"):
        export_job(scene, options(frame_start=5, frame_end=4), job_dir)
    assert (job_dir / "job.json").read_text() == before

    # A folder with someone's files in it is not a job: refuse rather than replace it.
    mine = tmp_path / "Desktop"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(AddonError, match="not a job folder"):
        export_job(scene, options(), mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_rendering_the_still_restores_every_setting_it_changed(scene):
    render = scene.render
    other_camera = bpy.data.objects.new("Other", bpy.data.cameras.new("Other"))
    scene.collection.objects.link(other_camera)
    scene.camera = other_camera
    render.engine = reference.engine_id("EEVEE")
    render.resolution_x, render.resolution_y, render.resolution_percentage = 640, 360, 37
    render.filepath = "//renders/shot_"
    render.film_transparent = True
    render.use_compositing = True
    render.use_motion_blur = True
    if hasattr(render.image_settings, "media_type"):  # 5.0: a movie output needs its media type first
        render.image_settings.media_type = "VIDEO"
    render.image_settings.file_format = "FFMPEG"
    scene.frame_set(3)
    plane = bpy.data.objects.new("Result plane", None)
    plane[reference.RESULT_PROPERTY] = "/some/job"
    scene.collection.objects.link(plane)
    camera = bpy.data.objects["Demo Camera"]

    rgb = reference.render_still(scene, camera, 1, 64, 96, "CYCLES")

    assert rgb.shape == (96, 64, 3) and rgb.dtype == np.uint8
    assert scene.camera == other_camera and scene.frame_current == 3
    assert render.engine == reference.engine_id("EEVEE")
    assert (render.resolution_x, render.resolution_y, render.resolution_percentage) == (640, 360, 37)
    assert render.filepath == "//renders/shot_" and render.film_transparent and render.use_compositing
    assert render.use_motion_blur
    assert render.image_settings.file_format == "FFMPEG"
    assert getattr(render.image_settings, "media_type", "VIDEO") == "VIDEO"
    assert plane.hide_render is False


def test_engine_ids_follow_the_blender_version():
    assert reference.engine_id("workbench") == "BLENDER_WORKBENCH"
    assert reference.engine_id("CYCLES") == "CYCLES"
    assert reference.engine_id("EEVEE") == ("BLENDER_EEVEE" if bpy.app.version >= (5, 0, 0) else "BLENDER_EEVEE_NEXT")
    with pytest.raises(AddonError, match="unknown render engine"):
        reference.engine_id("LUXCORE")


def test_a_users_image_is_the_reference_as_it_is(scene, tmp_path):
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    image_io.write_png(tmp_path / "hero.png", picture)
    np.testing.assert_array_equal(reference.load_image(tmp_path / "hero.png"), picture)

    paths = export_job(scene, options(reference="image", image_path=str(tmp_path / "hero.png")), tmp_path / "job")
    np.testing.assert_array_equal(image_io.read_image(paths.reference), picture)
    assert not (paths.root / "reference_pose.json").exists()
    assert read_job(paths.root).settings.provenance["reference"]["mode"] == "image"

    with pytest.raises(AddonError, match="does not exist"):
        reference.load_image(tmp_path / "missing.png")
    with pytest.raises(AddonError, match="needs the image's skeleton"):
        export_job(scene, options(reference="image", image_path=str(tmp_path / "hero.png"), retarget="chain"),
                   tmp_path / "job2")


def test_transparent_pixels_of_an_image_become_white(tmp_path):
    from PIL import Image

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    rgb = reference.load_image(tmp_path / "cutout.png")
    assert (rgb[:2] == (200, 0, 0)).all() and (rgb[2:] == 255).all()


def test_preview_skeleton_draws_the_frame_at_the_output_size(scene):
    scene.frame_set(2)
    image = preview_skeleton(scene, options(), frame=3)
    assert image.shape == (96, 64, 3) and image.dtype == np.uint8
    assert scene.frame_current == 2
    pose = projection.project_sequence(scene, bpy.data.objects[demo_scene.ARMATURE], scene.camera, 3, 3, 64, 96).poses[0]
    expected = drawing.draw_pose(pose, stroke_scale=drawing.stroke_scale_for(64, 96))
    np.testing.assert_array_equal(image, expected)  # the projected skeleton of that frame, drawn
    x, y, _ = pose.body[BODY_INDEX["left_knee"]]
    near_knee = image[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2]
    assert near_knee.any() and not image[0, 0].any()


def test_scene_problems_are_clear_errors_and_write_nothing(scene, tmp_path):
    job_dir = tmp_path / "job"
    with pytest.raises(AddonError, match="has no frames"):
        export_job(scene, options(frame_start=3, frame_end=2), job_dir)
    with pytest.raises(AddonError, match="there is no object called 'Nobody'"):
        export_job(scene, options(armature="Nobody"), job_dir)
    with pytest.raises(AddonError, match="not an armature"):
        export_job(scene, options(armature=demo_scene.CHARACTER), job_dir)
    with pytest.raises(AddonError, match="multiples of 8"):
        export_job(scene, options(width=100, height=96), job_dir)

    scene.camera = None
    with pytest.raises(AddonError, match="no active camera"):
        export_job(scene, options(), job_dir)

    bpy.data.objects.remove(bpy.data.objects[demo_scene.ARMATURE])
    with pytest.raises(AddonError, match="has no armature"):
        export_job(scene, options(camera="Demo Camera"), job_dir)

    rig = bpy.data.objects.new("Props", bpy.data.armatures.new("Props"))
    scene.collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    rig.data.edit_bones.new("Bone").tail = (0, 0, 1)
    bpy.ops.object.mode_set(mode="OBJECT")
    with pytest.raises(AddonError, match="these body keypoints have no bone"):
        export_job(scene, options(camera="Demo Camera"), job_dir)
    assert not job_dir.exists() and not list(tmp_path.iterdir())


def test_options_reach_the_poses(scene, tmp_path):
    rig = bpy.data.objects[demo_scene.ARMATURE]
    rig.rotation_euler = (0.0, 0.0, math.radians(180))  # back to the camera
    paths = export_job(
        scene, options(frame_end=1, draw_hands=False, occlusion=True, mapping={"left_ear": None}), tmp_path / "job"
    )
    job = read_job(paths.root)
    pose = job.poses[0]
    assert not job.settings.draw_hands and job.settings.provenance["occlusion"]
    assert (pose.left_hand == 0).all() and (pose.right_hand == 0).all()
    assert (pose.face[:, 2] == 0).all()  # the face is on the far side of the head
    assert pose.body[BODY_INDEX["left_ear"], 2] == 0 and "left_ear" in job.settings.provenance["unmapped"]
    assert not [k for k in job.settings.provenance["unmapped"] if "hand" in k]


def test_bad_generation_settings_fail_before_any_work(scene, tmp_path):
    with pytest.raises(AddonError) as error:
        export_job(scene, options(steps=0, context_frames=4, context_overlap=4, scheduler="magic",
                                  context_schedule="uniform"), tmp_path / "job")
    message = str(error.value)
    assert "steps must be a whole number from 1 to 1000, got 0" in message
    assert "context overlap" in message and "scheduler" in message
    assert "context schedule must be one of tapered, loop" in message
    with pytest.raises(AddonError, match="unknown reference mode 'photo'"):
        export_job(scene, options(reference="photo"), tmp_path / "job")
    assert not list(tmp_path.iterdir())


def test_exporting_a_shot_again_keeps_the_backends_work_and_the_users_files(scene, tmp_path):
    """Re-exporting (the command line, a batch, Generate) rewrites only the add-on's files; the
    runner's own resume then keeps what still matches and remakes what does not."""
    pytest.importorskip("torch")
    from animate_backend.job_runner import PipelineCache, run_job

    job_dir = tmp_path / "sh010"
    from blender_addon.commands.batch import is_done

    shot = options(frame_end=2, steps=1, context_frames=8, context_overlap=2, device="cpu", guidance_scale=1.0,
                   provenance={"batch": {"options": "opts", "blend_sha256": ["blend"]}})
    export_job(scene, shot, job_dir)
    cache = PipelineCache()
    first = run_job(job_dir, pipelines=cache)
    assert is_done(job_dir, "blend", "opts")
    frames = {p.name: p.read_bytes() for p in (job_dir / "out" / "frames").iterdir()}
    (job_dir / "notes.txt").write_text("the director's notes")
    (job_dir / "out" / "grade.cube").write_text("a colourist's LUT")

    export_job(scene, shot, job_dir)  # the same shot again: nothing the runner made is lost
    assert not is_done(job_dir, "blend", "opts"), "not finished until the backend has run the new export"
    assert (job_dir / "notes.txt").read_text() == "the director's notes"
    assert (job_dir / "out" / "grade.cube").read_text() == "a colourist's LUT"
    assert {p.name: p.read_bytes() for p in (job_dir / "out" / "frames").iterdir()} == frames
    again = run_job(job_dir, pipelines=cache)
    assert again["frames_reused"] == 2 and again["fingerprint"] == first["fingerprint"]
    assert is_done(job_dir, "blend", "opts")

    shot.job.seed = 8
    export_job(scene, shot, job_dir)  # changed: the runner remakes it
    changed = run_job(job_dir, pipelines=cache)
    assert changed["frames_generated"] == 2 and changed["fingerprint"] != first["fingerprint"]
    assert (job_dir / "notes.txt").exists() and (job_dir / "out" / "grade.cube").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "sh010"], "no staging folder left beside the job"


def test_what_a_killed_export_left_is_cleaned_up_by_the_next(scene, tmp_path):
    job_dir = tmp_path / "job"
    (tmp_path / ".job.partial-x1y2z3" / "poses").mkdir(parents=True)  # killed while staging
    export_job(scene, options(frame_end=2), job_dir)
    (job_dir / ".poses.partial-old").mkdir()  # killed while moving the skeletons in
    export_job(scene, options(frame_end=2), job_dir)
    assert [p.name for p in tmp_path.iterdir()] == ["job"]
    assert not [p for p in job_dir.iterdir() if p.name.startswith(".")]
