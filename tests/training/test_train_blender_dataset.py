"""Synthetic training data from a rigged character: frames and keypoints that agree."""

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from mathutils import Quaternion, Vector  # noqa: E402

from blender_addon.commands import demo_scene  # noqa: E402

from blender_addon.export import projection, rig_mapping  # noqa: E402
from blender_addon.commands.dataset import DatasetSettings, generate_dataset, main  # noqa: E402
from pose_bridge import bone_presets  # noqa: E402
from pose_bridge.image_io import read_image  # noqa: E402
from pose_bridge.keypoints import BODY_INDEX  # noqa: E402
from pose_bridge.openpose_json import load_poses  # noqa: E402

WIDTH, HEIGHT = 64, 80
LIMB_POINTS = ("neck", "right_elbow", "left_elbow", "right_wrist", "left_wrist", "right_knee", "left_knee",
               "right_hip", "left_hip")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = demo_scene.build_demo_scene()
    rig = bpy.data.objects[demo_scene.ARMATURE]
    out = tmp_path_factory.mktemp("synthetic")
    settings = DatasetSettings(takes=2, frames=3, width=WIDTH, height=HEIGHT, random_fraction=0.5, seed=1)
    manifest = generate_dataset(scene, rig, out, settings)
    return scene, rig, manifest, [json.loads(line) for line in manifest.read_text().splitlines()]


def test_every_take_has_its_frames_and_one_pose_per_frame(generated):
    _, _, manifest, entries = generated
    assert sorted(e["source"].split(":")[0] for e in entries) == ["action", "random"]
    for entry in entries:
        frames = sorted((manifest.parent / entry["frames"]).glob("*.png"))
        poses = load_poses(manifest.parent / entry["keypoints"])
        assert len(frames) == len(poses) == 3
        assert read_image(frames[0]).shape == (HEIGHT, WIDTH, 3)
        assert (poses.canvas_width, poses.canvas_height) == (WIDTH, HEIGHT)


def test_keypoints_lie_on_the_rendered_character(generated):
    _, _, manifest, entries = generated
    checked = 0
    for entry in entries:
        poses = load_poses(manifest.parent / entry["keypoints"])
        for i, pose in enumerate(poses):
            image = read_image(manifest.parent / entry["frames"] / f"{i + 1:04d}.png").astype(int)
            background = image[0, 0]
            for name in LIMB_POINTS:
                x, y, confidence = pose.body[BODY_INDEX[name]]
                assert confidence > 0, f"{name} missing in {entry['name']} frame {i}"
                patch = image[max(0, int(y) - 1):int(y) + 2, max(0, int(x) - 1):int(x) + 2]
                assert np.abs(patch - background).sum(axis=2).max() > 30, f"{name} is off the character"
                checked += 1
    assert checked == 2 * 3 * len(LIMB_POINTS)


def test_keypoints_match_an_independent_projection_of_the_bones(generated):
    scene, rig, manifest, entries = generated
    entry = next(e for e in entries if e["source"].startswith("action"))
    poses = load_poses(manifest.parent / entry["keypoints"])
    setup = entry["camera"]
    camera = bpy.data.objects.new("check", bpy.data.cameras.new("check"))
    scene.collection.objects.link(camera)
    camera.location = Vector(setup["location"])
    camera.rotation_mode = "QUATERNION"
    camera.rotation_quaternion = Quaternion(setup["rotation_quaternion"])
    camera.data.lens, camera.data.sensor_width = setup["lens"], setup["sensor_width"]
    mapping = rig_mapping.resolve_mapping(rig)
    for pose, frame in zip(poses, entry["scene_frames"]):
        scene.frame_set(frame)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        bones = projection.bone_frames(rig.evaluated_get(depsgraph))
        matrix = camera.calc_matrix_camera(depsgraph, x=WIDTH, y=HEIGHT) @ camera.matrix_world.inverted()
        def projected(name):
            clip = matrix @ Vector((*bone_presets.evaluate_source(mapping.body[name], bones), 1.0))
            return np.array(((clip.x / clip.w + 1) / 2 * WIDTH, (1 - (clip.y / clip.w + 1) / 2) * HEIGHT))

        for name in LIMB_POINTS:
            if name == "neck":  # DWPose's rule, as in the released weights' training data
                expected = (projected("right_shoulder") + projected("left_shoulder")) / 2
            else:
                expected = projected(name)
            np.testing.assert_allclose(pose.body[BODY_INDEX[name], :2], expected, atol=0.05)
    bpy.data.objects.remove(camera)


def test_random_takes_move_and_the_scene_is_left_as_it_was(generated):
    scene, rig, manifest, entries = generated
    entry = next(e for e in entries if e["source"] == "random")
    poses = load_poses(manifest.parent / entry["keypoints"])
    assert np.abs(poses[0].body[:, :2] - poses[2].body[:, :2]).max() > 1.0
    assert rig.animation_data.action is not None
    assert "Dataset Camera" not in bpy.data.objects and "Dataset Sun" not in bpy.data.objects


def test_the_training_dataset_reads_the_generated_takes(generated):
    from animate_backend.train.data import AnimateAnyoneDataset

    _, _, manifest, _ = generated
    dataset = AnimateAnyoneDataset(manifest, stage=2, width=32, height=32, clip_frames=3, clip_stride=1,
                                   min_reference_distance=0)
    assert len(dataset) == 2 and not dataset.skipped
    assert dataset[1]["pixel_values"].shape == (3, 3, 32, 32)


def test_command_line_renders_a_saved_blend(tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    demo_scene.build_demo_scene()
    blend = tmp_path / "character.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    assert main([str(blend), "--out", str(tmp_path / "data"), "--takes", "1", "--frames", "2",
                 "--size", "32x32", "--random-fraction", "1", "-q"]) == 0
    assert len(list((tmp_path / "data" / "take_0000" / "frames").glob("*.png"))) == 2
    assert main([str(tmp_path / "missing.blend"), "--out", str(tmp_path / "x")]) == 1


def test_command_line_renders_the_demo_character_without_a_blend(tmp_path):
    assert main(["--demo-character", "--out", str(tmp_path / "data"), "--takes", "1", "--frames", "2",
                 "--size", "32x32", "-q"]) == 0
    assert len(list((tmp_path / "data" / "take_0000" / "frames").glob("*.png"))) == 2
    assert main(["--out", str(tmp_path / "x")]) == 1  # neither a .blend nor --demo-character
