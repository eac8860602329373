"""OpenPose JSON: exact round trips, the variants people have, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pose_samples import standing_pose

from pose_bridge.errors import PoseFileError
from pose_bridge.keypoints import Pose, PoseSequence
from pose_bridge.openpose_json import (
    load_poses,
    pose_from_dict,
    pose_to_dict,
    read_frame,
    read_frame_folder,
    read_sequence,
    write_frame,
    write_sequence,
)


def random_pose(seed: int, width: int = 640, height: int = 480) -> Pose:
    rng = np.random.default_rng(seed)
    pose = Pose(width, height)
    for points in pose.parts().values():
        points[:, 0] = rng.uniform(0, width, len(points)).round(rng.integers(0, 7))
        points[:, 1] = rng.uniform(0, height, len(points))
        points[:, 2] = rng.uniform(0, 1, len(points))
    pose.body[3] = (0.1, 4000.75, 1e-3)
    pose.left_hand[5] = 0.0  # a missing point
    return pose


def assert_same_pose(a: Pose, b: Pose) -> None:
    assert a.size == b.size
    for name, points in a.parts().items():
        np.testing.assert_array_equal(points, b.parts()[name], err_msg=name)


def test_frame_round_trip_is_exact(tmp_path):
    pose = random_pose(0)
    write_frame(pose, tmp_path / "frame.json")
    assert_same_pose(read_frame(tmp_path / "frame.json"), pose)


def test_sequence_round_trip_is_exact_and_keeps_fps(tmp_path):
    seq = PoseSequence([random_pose(i) for i in range(3)], fps=12.5)
    write_sequence(seq, tmp_path / "poses.json")
    back = read_sequence(tmp_path / "poses.json")
    assert back.fps == 12.5 and len(back) == 3
    for a, b in zip(back, seq):
        assert_same_pose(a, b)
    data = json.loads((tmp_path / "poses.json").read_text())
    assert data["format"] == "pose_bridge.sequence" and data["version"] == 1
    assert (data["canvas_width"], data["canvas_height"]) == (640, 480)


def test_numbers_are_written_short(tmp_path):
    pose = Pose(100, 100)
    pose.body[0] = (100.6, 33.3, 0.9)
    write_frame(pose, tmp_path / "f.json")
    text = (tmp_path / "f.json").read_text()
    assert "100.6," in text and "33.3," in text and "0.9," in text
    assert "100.59" not in text


def test_openpose_dict_layout():
    d = pose_to_dict(standing_pose())
    person = d["people"][0]
    assert len(person["pose_keypoints_2d"]) == 54
    assert len(person["hand_left_keypoints_2d"]) == 63
    assert len(person["hand_right_keypoints_2d"]) == 63
    assert len(person["face_keypoints_2d"]) == 204
    assert person["pose_keypoints_2d"][:3] == [256.0, 100.0, pytest.approx(0.9)]


def test_normalised_coordinates_are_scaled_to_the_canvas():
    d = {"people": [{"pose_keypoints_2d": [0.5, 0.25, 1.0] + [0.0] * 51}], "canvas_width": 200, "canvas_height": 100}
    pose = pose_from_dict(d)
    np.testing.assert_allclose(pose.body[0], (100.0, 25.0, 1.0))


def test_pixel_coordinates_are_kept():
    d = {"people": [{"pose_keypoints_2d": [50.0, 0.5, 1.0] + [0.0] * 51}], "canvas_width": 200, "canvas_height": 100}
    np.testing.assert_allclose(pose_from_dict(d).body[0], (50.0, 0.5, 1.0))


def test_missing_canvas_needs_a_canvas_size():
    d = {"people": [{"pose_keypoints_2d": [0.5, 0.5, 1.0] + [0.0] * 51}]}
    with pytest.raises(PoseFileError, match="canvas"):
        pose_from_dict(d, source="x.json")
    pose = pose_from_dict(d, canvas_size=(64, 32))
    assert pose.size == (64, 32)
    np.testing.assert_allclose(pose.body[0], (32.0, 16.0, 1.0))


def test_missing_hand_and_face_keys_are_missing_points():
    d = {"people": [{"pose_keypoints_2d": [10.0, 10.0, 1.0] * 18, "face_keypoints_2d": []}],
         "canvas_width": 64, "canvas_height": 64}
    pose = pose_from_dict(d)
    assert not pose.left_hand.any() and not pose.right_hand.any() and not pose.face.any()


def test_a_frame_with_nobody_is_an_empty_pose():
    pose = pose_from_dict({"people": [], "canvas_width": 64, "canvas_height": 48})
    assert pose.size == (64, 48) and not pose.body.any()


def _person(x0: float, size: float, conf: float) -> dict:
    values = []
    for i in range(18):
        values += [x0 + size * (i % 2), 10 + size * (i // 9), conf]
    return {"pose_keypoints_2d": values}


def test_several_people_pick_the_largest_by_default_or_as_asked():
    d = {"people": [_person(0, 10, 1.0), _person(100, 50, 0.5)], "canvas_width": 400, "canvas_height": 400}
    assert pose_from_dict(d).body[0, 0] == 100  # the bigger box
    assert pose_from_dict(d, person="confident").body[0, 0] == 0  # the more confident
    assert pose_from_dict(d, person=0).body[0, 0] == 0


def test_body25_and_70_point_faces_are_converted():
    body25 = np.zeros((25, 3))
    body25[:, 0] = np.arange(25)
    body25[:, 2] = 1
    face70 = np.ones((70, 3))
    d = {"people": [{"pose_keypoints_2d": body25.ravel().tolist(), "face_keypoints_2d": face70.ravel().tolist()}],
         "canvas_width": 100, "canvas_height": 100}
    pose = pose_from_dict(d)
    # BODY_25 has mid-hip at 8, so COCO's right hip (8) is BODY_25's 9.
    assert pose.body[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    assert pose.face.shape == (68, 3)


def test_folder_is_read_in_natural_order(tmp_path):
    for n in (1, 2, 10):
        pose = Pose(64, 64)
        pose.body[0] = (n + 20, 5, 1.0)
        write_frame(pose, tmp_path / f"clip_{n}_keypoints.json")
    seq = read_frame_folder(tmp_path, fps=30)
    assert [p.body[0, 0] for p in seq] == [21, 22, 30]
    assert seq.fps == 30


def test_load_poses_reads_every_kind(tmp_path):
    pose = standing_pose()
    write_frame(pose, tmp_path / "frame.json")
    write_sequence(PoseSequence([pose, pose], fps=8), tmp_path / "seq.json")
    (tmp_path / "list.json").write_text(json.dumps([pose_to_dict(pose)] * 3))
    (tmp_path / "dir").mkdir()
    write_frame(pose, tmp_path / "dir" / "0001.json")

    assert len(load_poses(tmp_path / "frame.json")) == 1
    assert load_poses(tmp_path / "seq.json").fps == 8
    assert load_poses(tmp_path / "seq.json", fps=25).fps == 25
    assert len(load_poses(tmp_path / "list.json")) == 3
    assert len(load_poses(tmp_path / "dir")) == 1
    assert_same_pose(load_poses(tmp_path / "seq.json")[1], pose)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"people": [{"pose_keypoints_2d": [1.0, 2.0, 1.0] * 17}], "canvas_width": 9, "canvas_height": 9}),
         "17 points, expected 18"),
        (json.dumps({"people": [{"pose_keypoints_2d": [1.0, 2.0] * 9 + [1.0]}], "canvas_width": 9, "canvas_height": 9}),
         "triples"),
        ('{"people": [{"pose_keypoints_2d": [NaN' + ", 1.0" * 53 + ']}], "canvas_width": 9, "canvas_height": 9}',
         "NaN or infinite"),
        ('{"people": [{"pose_keypoints_2d": [Infinity' + ", 1.0" * 53 + ']}], "canvas_width": 9, "canvas_height": 9}',
         "NaN or infinite"),
        (json.dumps({"people": [], "canvas_width": 0, "canvas_height": 10}), "canvas size must be positive"),
        (json.dumps({"people": [{"pose_keypoints_2d": ["a"] * 54}], "canvas_width": 9, "canvas_height": 9}),
         "not a number"),
        (json.dumps({"persons": []}), "no 'people'"),
    ],
)
def test_bad_frame_files_name_the_file_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PoseFileError, match=problem) as info:
        read_frame(path)
    assert str(path) in str(info.value)


def test_bad_sequences(tmp_path):
    path = tmp_path / "poses.json"
    base = {"format": "pose_bridge.sequence", "version": 1, "canvas_width": 64, "canvas_height": 64, "fps": 24}
    path.write_text(json.dumps({**base, "frames": []}))
    with pytest.raises(PoseFileError, match="no frames"):
        read_sequence(path)
    path.write_text(json.dumps({**base, "version": 99, "frames": [{"people": []}]}))
    with pytest.raises(PoseFileError, match="version"):
        read_sequence(path)
    path.write_text(json.dumps({**base, "fps": -1, "frames": [{"people": []}]}))
    with pytest.raises(PoseFileError, match="fps"):
        read_sequence(path)
    path.write_text(json.dumps({**base, "frames": [{"people": []}, {"people": [{"pose_keypoints_2d": [1]}]}]}))
    with pytest.raises(PoseFileError, match="frame 1"):
        read_sequence(path)
    with pytest.raises(PoseFileError, match="does not exist"):
        read_sequence(tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoseFileError, match="no .json"):
        load_poses(tmp_path / "empty")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "frame.json"
    write_frame(standing_pose(), path)
    before = path.read_bytes()

    def broken_dumps(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError):
        write_frame(random_pose(1), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.json"]
