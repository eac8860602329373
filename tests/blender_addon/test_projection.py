"""Armature bones to camera pixels, checked against an independent projection.

The expected pixels are computed here from the camera's projection matrix
(Object.calc_matrix_camera) and its inverted world matrix, not with
world_to_camera_view, which the add-on uses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from mathutils import Matrix, Vector  # noqa: E402

from blender_addon.commands import demo_scene  # noqa: E402

from blender_addon.export import projection, rig_mapping  # noqa: E402
from blender_addon.errors import AddonError  # noqa: E402
from pose_bridge import bone_presets  # noqa: E402
from pose_bridge.keypoints import BODY_INDEX, HAND_NAMES  # noqa: E402


@pytest.fixture(autouse=True)
def empty_file():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


def make_armature(name: str, bones: list[tuple[str, tuple, tuple, str | None]]) -> bpy.types.Object:
    rig = bpy.data.objects.new(name, bpy.data.armatures.new(name))
    bpy.context.scene.collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    for bone_name, head, tail, parent in bones:
        bone = rig.data.edit_bones.new(bone_name)
        bone.head, bone.tail = head, tail
        if parent:
            bone.parent = rig.data.edit_bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    return rig


def make_camera(location, rotation_deg, *, ortho: bool = False, shift=(0.0, 0.0), sensor_fit: str = "AUTO"):
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    camera.location = location
    camera.rotation_euler = [math.radians(a) for a in rotation_deg]
    camera.data.shift_x, camera.data.shift_y = shift
    camera.data.sensor_fit = sensor_fit
    if ortho:
        camera.data.type = "ORTHO"
        camera.data.ortho_scale = 2.6
    bpy.context.scene.collection.objects.link(camera)
    bpy.context.scene.camera = camera
    return camera


def independent_pixel(camera, point_world, width: int, height: int):
    """(x, y) in pixels, or None behind the camera, from the projection matrix."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    camera_eval = camera.evaluated_get(depsgraph)
    projection_matrix = camera_eval.calc_matrix_camera(depsgraph, x=width, y=height, scale_x=1.0, scale_y=1.0)
    view = camera_eval.matrix_world.normalized().inverted()
    in_view = view @ Vector(point_world)
    if in_view.z >= 0.0:  # cameras look down -Z
        return None
    clip = projection_matrix @ in_view.to_4d()
    ndc = clip.xyz / clip.w
    return (ndc.x + 1.0) / 2.0 * width, (1.0 - ndc.y) / 2.0 * height


def bone_point_world(rig, source) -> Vector:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    rig_eval = rig.evaluated_get(depsgraph)
    pose_bone = rig_eval.pose.bones[source.bone]
    return rig_eval.matrix_world @ (pose_bone.head if source.end == "head" else pose_bone.tail)


def demo_character(frames: int = 4):
    scene = demo_scene.build_demo_scene(width=96, height=128, frames=frames)
    return scene, bpy.data.objects[demo_scene.ARMATURE], scene.camera


CAMERAS = {
    "perspective": dict(location=(0.3, -3.5, 1.1), rotation_deg=(88, 0, 4)),
    "lens_shift_vertical_fit": dict(location=(0.0, -3.2, 0.6), rotation_deg=(90, 0, 0), shift=(0.12, 0.15),
                                   sensor_fit="VERTICAL"),
    "orthographic": dict(location=(-0.5, -4.0, 1.0), rotation_deg=(90, 0, -8), ortho=True),
}


@pytest.mark.parametrize("camera_kind", CAMERAS)
@pytest.mark.parametrize("size", [(96, 128), (128, 64)])
def test_keypoints_equal_an_independent_projection_of_the_bones(camera_kind, size):
    scene, rig, demo_camera = demo_character(frames=4)
    camera = make_camera(**CAMERAS[camera_kind])
    # Move the whole rig too, so that object animation counts as well as bone animation.
    rig.location = (0.0, 0.0, 0.0)
    rig.keyframe_insert("location", frame=1)
    rig.location = (0.25, 0.3, 0.05)
    rig.rotation_euler = (0.0, 0.0, math.radians(20))
    rig.keyframe_insert("location", frame=4)
    rig.keyframe_insert("rotation_euler", frame=4)
    width, height = size

    scene.frame_set(3)
    result = projection.project_sequence(scene, rig, camera, 1, 4, width, height)

    assert scene.frame_current == 3  # the frame the scene was on is restored
    assert result.mapping.preset == "rigify_meta"
    assert len(result.poses) == 4 and result.poses.canvas_width == width and result.poses.canvas_height == height
    scene.render.resolution_x, scene.render.resolution_y = width, height  # the frame the poses are on
    checked = 0
    for frame_index, frame in enumerate(range(1, 5)):
        scene.frame_set(frame)
        pose = result.poses[frame_index]
        groups = [("body", pose.body, {n: i for n, i in BODY_INDEX.items()})]
        groups += [(g, getattr(pose, g), {n: i for i, n in enumerate(HAND_NAMES)}) for g in ("left_hand", "right_hand")]
        for group, points, index in groups:
            for name, source in result.mapping.group(group).items():
                if not isinstance(source, bone_presets.BonePoint) or (group, name) == ("body", "neck"):
                    continue  # offsets (nose, eyes, ears) are pose_bridge's arithmetic, tested there
                expected = independent_pixel(camera, bone_point_world(rig, source), width, height)
                x, y, confidence = points[index[name]]
                if expected is None or not (0 <= expected[0] <= width and 0 <= expected[1] <= height):
                    assert confidence == 0, (frame, group, name)
                    continue
                assert confidence == 1.0, (frame, group, name)
                np.testing.assert_allclose((x, y), expected, atol=2e-3, err_msg=f"{frame} {group} {name}")
                checked += 1
        # The neck is DWPose's: the mean of the two shoulders, present when both are.
        right, left = pose.body[BODY_INDEX["right_shoulder"]], pose.body[BODY_INDEX["left_shoulder"]]
        if right[2] and left[2]:
            np.testing.assert_allclose(pose.body[BODY_INDEX["neck"]], [*((right[:2] + left[:2]) / 2), 1.0], atol=1e-4)
        else:
            assert not pose.body[BODY_INDEX["neck"]].any()
    assert checked > 100  # body and fingers of every frame were compared (some may be out of frame)


def test_points_behind_the_camera_or_outside_the_frame_are_missing():
    scene, rig, camera = demo_character(frames=2)
    rig.animation_data_clear()
    rig.location = (0.0, 0.0, 0.0)
    rig.keyframe_insert("location", frame=1)
    rig.location = (0.0, -8.0, 0.0)  # behind the camera, which stands at y = -3.7 looking at +y
    rig.keyframe_insert("location", frame=2)
    result = projection.project_sequence(scene, rig, camera, 1, 2, 96, 128)
    assert (result.poses[0].body[:, 2] == 1).all()
    behind = result.poses[1]
    for points in behind.parts().values():
        assert (points == 0).all()
    # The mirrored image of a point behind the camera can fall inside the frame; it must not leak.
    scene.frame_set(2)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    from bpy_extras.object_utils import world_to_camera_view

    neck = rig.evaluated_get(depsgraph).matrix_world @ rig.evaluated_get(depsgraph).pose.bones["spine.004"].head
    ndc = world_to_camera_view(scene, camera, neck)
    assert ndc.z < 0 and 0 < ndc.x < 1 and 0 < ndc.y < 1

    # Half out of the frame on the left: the points past the edge are missing, the others not.
    rig.animation_data_clear()
    rig.location = (-1.0, 0.0, 0.0)
    result = projection.project_sequence(scene, rig, camera, 1, 1, 96, 128)
    body = result.poses[0].body
    scene.frame_set(1)
    inside = outside = 0
    for name, source in result.mapping.body.items():
        if isinstance(source, bone_presets.BonePoint):
            x, _y = independent_pixel(camera, bone_point_world(rig, source), 96, 128)
            if x < 0:
                assert body[BODY_INDEX[name], 2] == 0, name
                outside += 1
            else:
                assert body[BODY_INDEX[name], 2] == 1, name
                inside += 1
    assert inside and outside


def preset_rig(preset: bone_presets.ArmaturePreset) -> bpy.types.Object:
    """An armature with the bone names a preset uses (first alternatives), laid out on a grid."""
    names: list[str] = []
    for table in (preset.body, preset.left_hand, preset.right_hand):
        for spec in table.values():
            first = spec[0] if isinstance(spec, tuple) else spec
            for bone in rig_mapping.source_bones(first):
                if bone not in names:
                    names.append(bone)
    names += [m for m in preset.markers if m not in names]
    bones = []
    for i, name in enumerate(names):
        x, z = -1.0 + 0.2 * (i % 11), 0.2 + 0.2 * (i // 11)
        bones.append((name, (x, 0.0, z), (x, 0.0, z + 0.1), None))
    return make_armature(preset.name, bones)


@pytest.mark.parametrize("preset_name", sorted(bone_presets.PRESETS))
def test_each_preset_maps_a_rig_built_with_its_bone_names(preset_name):
    preset = bone_presets.PRESETS[preset_name]
    rig = preset_rig(preset)
    camera = make_camera((0.0, -6.0, 1.0), (90, 0, 0), ortho=True)
    camera.data.ortho_scale = 3.0
    mapping = rig_mapping.resolve_mapping(rig)
    assert mapping.preset == preset_name
    assert all(name in mapping.body for name in rig_mapping.REQUIRED_BODY)
    result = projection.project_sequence(bpy.context.scene, rig, camera, 1, 1, 64, 96)
    pose = result.poses[0]
    for name in rig_mapping.REQUIRED_BODY:
        source = mapping.body[name]
        if isinstance(source, bone_presets.BonePoint) and name != "neck":  # the neck: from the shoulders
            expected = independent_pixel(camera, bone_point_world(rig, source), 64, 96)
            np.testing.assert_allclose(pose.body[BODY_INDEX[name], :2], expected, atol=2e-3, err_msg=name)
            assert pose.body[BODY_INDEX[name], 2] == 1.0
    # Every hand point the preset has a bone for is mapped; the rest are listed as unmapped.
    for group in ("left_hand", "right_hand"):
        expected_unmapped = [f"{group}.{n}" for n in HAND_NAMES if n not in getattr(preset, group)]
        assert [k for k in result.unmapped if k.startswith(group + ".")] == expected_unmapped


def test_mapping_overrides_sit_on_top_of_the_preset():
    scene, rig, camera = demo_character(frames=1)
    result = projection.project_sequence(
        scene, rig, camera, 1, 1, 96, 128,
        overrides={"left_wrist": ("upper_arm.L", "tail"), "nose": None, "right_hand.wrist": "forearm.R"},
    )
    pose = result.poses[0]
    assert "nose" in result.unmapped and pose.body[BODY_INDEX["nose"], 2] == 0
    scene.frame_set(1)
    expected = independent_pixel(camera, bone_point_world(rig, bone_presets.BonePoint("upper_arm.L", "tail")), 96, 128)
    np.testing.assert_allclose(pose.body[BODY_INDEX["left_wrist"], :2], expected, atol=2e-3)
    hand = independent_pixel(camera, bone_point_world(rig, bone_presets.BonePoint("hand.L")), 96, 128)
    assert np.linalg.norm(np.subtract(hand, expected)) > 5  # the override moved it (up to the elbow)
    expected = independent_pixel(camera, bone_point_world(rig, bone_presets.BonePoint("forearm.R")), 96, 128)
    np.testing.assert_allclose(pose.right_hand[0, :2], expected, atol=2e-3)
    # The panel's nested table works the same way.
    nested = rig_mapping.resolve_mapping(rig, {"body": {"left_wrist": bone_presets.BonePoint("forearm.L", "tail")}})
    assert nested.body["left_wrist"] == bone_presets.BonePoint("forearm.L", "tail")

    with pytest.raises(AddonError, match="no such bone"):
        rig_mapping.resolve_mapping(rig, {"left_wrist": "Wrist_Left"})
    with pytest.raises(AddonError, match="unknown keypoint 'left_pinky'"):
        rig_mapping.resolve_mapping(rig, {"left_pinky": "hand.L"})


def test_unmapped_required_bones_say_what_to_map():
    rig = make_armature("Props", [("Bone", (0, 0, 0), (0, 0, 1), None), ("Bone.001", (0, 0, 1), (0, 0, 2), "Bone")])
    camera = make_camera((0, -5, 1), (90, 0, 0))
    with pytest.raises(AddonError) as error:
        projection.project_sequence(bpy.context.scene, rig, camera, 1, 2, 64, 64)
    message = str(error.value)
    assert "matches no bone-name preset" in message and "left_wrist" in message and "Bone Mapping" in message
    # Mapping them by hand makes the same rig usable.
    overrides = {name: "Bone" for name in rig_mapping.REQUIRED_BODY}
    result = projection.project_sequence(bpy.context.scene, rig, camera, 1, 2, 64, 64, overrides=overrides)
    assert "nose" in result.unmapped and "left_wrist" not in result.unmapped
    # The panel passes its whole table with preset "none"; a row left empty stays unmapped.
    overrides["left_wrist"] = None
    with pytest.raises(AddonError, match="with the bone mapping given, these body keypoints have no bone: left_wrist;"):
        projection.project_sequence(bpy.context.scene, rig, camera, 1, 2, 64, 64, overrides=overrides, preset="none")


def test_bad_inputs_are_clear_errors():
    scene, rig, camera = demo_character(frames=2)
    with pytest.raises(AddonError, match="has no frames"):
        projection.project_sequence(scene, rig, camera, 5, 4, 96, 128)
    with pytest.raises(AddonError, match="multiples of 8"):
        projection.project_sequence(scene, rig, camera, 1, 2, 100, 128)
    with pytest.raises(AddonError, match="not an armature"):
        projection.resolve_armature(scene, camera.name)
    with pytest.raises(AddonError, match="not a camera"):
        projection.resolve_camera(scene, rig.name)
    scene.camera = None
    with pytest.raises(AddonError, match="no active camera"):
        projection.resolve_camera(scene, None)


def test_face_points_are_weighted_centroids_of_their_deformed_vertex_groups():
    rig = make_armature("Rig", [("head", (0, 0, 1.5), (0, 0, 1.8), None)])
    mesh = bpy.data.meshes.new("Face")
    rest = [(0.0, -0.1, 1.6), (0.05, -0.1, 1.7), (-0.05, -0.1, 1.7)]
    mesh.from_pydata(rest, [], [(0, 1, 2)])
    face = bpy.data.objects.new("Face", mesh)
    bpy.context.scene.collection.objects.link(face)
    face.vertex_groups.new(name="head").add([0, 1, 2], 1.0, "REPLACE")
    face.vertex_groups.new(name="face_00").add([0], 1.0, "REPLACE")
    group = face.vertex_groups.new(name="face_30")
    group.add([1], 0.25, "REPLACE")
    group.add([2], 0.75, "REPLACE")
    face.modifiers.new("Armature", "ARMATURE").object = rig
    # The head turns and moves on frame 2; the face follows through the Armature modifier.
    pose_bone = rig.pose.bones["head"]
    pose_bone.keyframe_insert("rotation_quaternion", frame=1)
    pose_bone.keyframe_insert("location", frame=1)
    pose_bone.rotation_quaternion = Matrix.Rotation(math.radians(30), 3, "Y").to_quaternion()
    pose_bone.location = (0.0, 0.05, 0.0)
    pose_bone.keyframe_insert("rotation_quaternion", frame=2)
    pose_bone.keyframe_insert("location", frame=2)
    camera = make_camera((0, -3, 1.65), (90, 0, 0))
    overrides = {name: "head" for name in rig_mapping.REQUIRED_BODY}

    result = projection.project_sequence(bpy.context.scene, rig, camera, 1, 2, 64, 64, overrides=overrides)

    assert result.face_mesh == "Face"
    for frame_index, frame in enumerate((1, 2)):
        bpy.context.scene.frame_set(frame)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        rig_eval = rig.evaluated_get(depsgraph)
        # Linear blend skinning with one bone at weight 1: world = rig @ pose @ rest^-1 @ vertex.
        skin = rig_eval.matrix_world @ rig_eval.pose.bones["head"].matrix @ rig.data.bones["head"].matrix_local.inverted()
        deformed = [face.matrix_world @ (skin @ Vector(v)) for v in rest]
        face_points = result.poses[frame_index].face
        np.testing.assert_allclose(face_points[0, :2], independent_pixel(camera, deformed[0], 64, 64), atol=2e-3)
        centroid = deformed[1] * 0.25 + deformed[2] * 0.75
        np.testing.assert_allclose(face_points[30, :2], independent_pixel(camera, centroid, 64, 64), atol=2e-3)
        assert face_points[0, 2] == face_points[30, 2] == 1.0
        assert (np.delete(face_points[:, 2], [0, 30]) == 0).all()
    assert not np.allclose(result.poses[0].face[30], result.poses[1].face[30])

    off = projection.project_sequence(bpy.context.scene, rig, camera, 1, 1, 64, 64, overrides=overrides, face=False)
    assert off.face_mesh == "" and (off.poses[0].face == 0).all()


def test_occlusion_drops_joints_hidden_behind_the_characters_own_body():
    scene, rig, camera = demo_character(frames=1)
    # Side on: the character faces +X, so its left side (arm and leg) is behind its body.
    rig.rotation_euler = (0.0, 0.0, math.radians(90))
    seen = projection.project_sequence(scene, rig, camera, 1, 1, 96, 128, occlusion=False).poses[0]
    hidden = projection.project_sequence(scene, rig, camera, 1, 1, 96, 128, occlusion=True).poses[0]
    assert (seen.body[:, 2] == 1).all()
    for name in ("left_elbow", "left_wrist", "left_knee", "left_ankle"):
        assert hidden.body[BODY_INDEX[name], 2] == 0, name
    # Joints inside their own limb, on the near side, stay.
    for name in ("right_shoulder", "right_elbow", "right_wrist", "right_hip", "right_knee", "right_ankle"):
        assert hidden.body[BODY_INDEX[name], 2] == 1, name
    assert (hidden.left_hand[:, 2] == 0).sum() > (seen.left_hand[:, 2] == 0).sum()

    # Back to the camera: the face points (on the front of the head) are all hidden.
    rig.rotation_euler = (0.0, 0.0, math.radians(180))
    seen = projection.project_sequence(scene, rig, camera, 1, 1, 96, 128, occlusion=False).poses[0]
    hidden = projection.project_sequence(scene, rig, camera, 1, 1, 96, 128, occlusion=True).poses[0]
    assert (seen.face[:, 2] == 1).all() and (hidden.face[:, 2] == 0).all()
    assert hidden.body[BODY_INDEX["nose"], 2] == 0 and hidden.body[BODY_INDEX["neck"], 2] == 1
    # Facing the camera nothing of the face is hidden.
    rig.rotation_euler = (0.0, 0.0, 0.0)
    front = projection.project_sequence(scene, rig, camera, 1, 1, 96, 128, occlusion=True).poses[0]
    assert (front.face[:, 2] == 1).all()
    assert all(front.body[BODY_INDEX[n], 2] == 1 for n in ("nose", "right_eye", "left_eye", "neck", "left_hip"))
