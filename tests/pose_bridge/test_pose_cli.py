"""python -m pose_bridge: draw, retarget, detect, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from pose_samples import standing_pose

from pose_bridge.__main__ import main
from pose_bridge.drawing import draw_pose
from pose_bridge.image_io import read_image, read_video
from pose_bridge.keypoints import PoseSequence
from pose_bridge.openpose_json import read_frame, read_sequence, write_frame, write_sequence


@pytest.fixture()
def sequence_file(tmp_path):
    seq = PoseSequence([standing_pose().resized(64, 64), standing_pose().resized(64, 64)], fps=8)
    write_sequence(seq, tmp_path / "poses.json")
    return tmp_path / "poses.json"


def test_draw_writes_numbered_pngs(sequence_file, tmp_path):
    assert main(["draw", str(sequence_file), "--out", str(tmp_path / "png"), "--no-face"]) == 0
    files = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert files == ["0001.png", "0002.png"]
    expected = draw_pose(read_sequence(sequence_file)[0], face=False)
    np.testing.assert_array_equal(read_image(tmp_path / "png" / "0001.png"), expected)


def test_draw_with_size_and_video(sequence_file, tmp_path):
    pytest.importorskip("av")
    assert main(["draw", str(sequence_file), "--out", str(tmp_path), "--size", "96x64", "--video",
                 "--scale-strokes"]) == 0
    frames = list(read_video(tmp_path / "poses.mp4"))
    assert len(frames) == 2 and frames[0].shape == (64, 96, 3)


def test_retarget_command(tmp_path):
    reference = standing_pose()
    write_frame(reference, tmp_path / "ref.json")
    driving = reference.resized(1024, 1024)
    write_frame(driving, tmp_path / "drv.json")
    out = tmp_path / "out.json"
    assert main(["retarget", "--reference", str(tmp_path / "ref.json"), "--driving", str(tmp_path / "drv.json"),
                 "--out", str(out), "--mode", "global"]) == 0
    result = read_sequence(out)
    np.testing.assert_allclose(result[0].body[:, :2], reference.body[:, :2], atol=1e-3)


def test_user_errors_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    proc = subprocess.run([sys.executable, "-m", "pose_bridge", "draw", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.json" in lines[0]


def test_detect_command_on_image_and_folder_of_videos(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("av")
    from test_detect_dwpose import constant_model, simcc_outputs, yolox_output

    from pose_bridge.image_io import write_png, write_video

    models = tmp_path / "models"
    models.mkdir()
    constant_model(models / "yolox_l.onnx", "images", (1, 3, 640, 640), {"output": yolox_output()})
    constant_model(models / "dw-ll_ucoco_384.onnx", "input", (1, 3, 384, 288), simcc_outputs())
    frame = np.zeros((240, 320, 3), np.uint8)
    write_png(tmp_path / "still.png", frame)
    assert main(["detect", str(tmp_path / "still.png"), "--models", str(models), "--out", str(tmp_path / "still.json")]) == 0
    assert read_frame(tmp_path / "still.json").body[0, 2] == pytest.approx(0.7)

    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", [frame] * 2, fps=10)
    write_video(videos / "b.mp4", [frame] * 3, fps=10)
    assert main(["detect", str(videos), "--models", str(models), "--out", str(tmp_path / "out")]) == 0
    assert len(read_sequence(tmp_path / "out" / "a.poses.json")) == 2
    assert len(read_sequence(tmp_path / "out" / "b.poses.json")) == 3

    assert main(["detect", str(tmp_path / "still.png"), "--models", str(tmp_path / "nomodels"), "--out", "x.json"]) == 2
    assert "huggingface.co/yzd-v/DWPose" in capsys.readouterr().err


def test_draw_refuses_existing_outputs_unless_force(sequence_file, tmp_path, capsys):
    out = tmp_path / "png"
    out.mkdir()
    (out / ".0001.png.partial-a8f3k2.png").write_bytes(b"left by a killed run")
    assert main(["draw", str(sequence_file), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0001.png", "0002.png"]
    (out / "0002.png").write_bytes(b"edited by hand")
    assert main(["draw", str(sequence_file), "--out", str(out)]) == 2
    assert "0001.png already exists" in capsys.readouterr().err
    assert (out / "0002.png").read_bytes() == b"edited by hand", "nothing written when refused"
    assert main(["draw", str(sequence_file), "--out", str(out), "--force"]) == 0
    assert read_image(out / "0002.png").shape == (64, 64, 3)

    pytest.importorskip("av")
    assert main(["draw", str(sequence_file), "--out", str(tmp_path), "--video"]) == 0
    video = tmp_path / "poses.mp4"
    video.write_bytes(b"someone's video")
    assert main(["draw", str(sequence_file), "--out", str(tmp_path), "--video"]) == 2
    assert video.read_bytes() == b"someone's video"
    assert main(["draw", str(sequence_file), "--out", str(tmp_path), "--video", "--force"]) == 0
    assert len(list(read_video(video))) == 2


def test_retarget_replaces_only_a_pose_file_and_only_with_force(tmp_path, capsys):
    write_frame(standing_pose(), tmp_path / "ref.json")
    write_frame(standing_pose().resized(1024, 1024), tmp_path / "drv.json")
    args = ["retarget", "--reference", str(tmp_path / "ref.json"), "--driving", str(tmp_path / "drv.json")]
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    assert main(args + ["--out", str(notes)]) == 2
    assert main(args + ["--out", str(notes), "--force"]) == 2
    assert "not a pose file" in capsys.readouterr().err and notes.read_text() == '{"my": "notes"}'

    out = tmp_path / "out.json"
    assert main(args + ["--out", str(out)]) == 0
    before = out.read_text()
    assert main(args + ["--out", str(out), "--mode", "global"]) == 2 and out.read_text() == before
    assert main(args + ["--out", str(out), "--mode", "global", "--force"]) == 0


def test_a_keypoint_far_off_the_canvas_is_one_line_and_no_frame_is_written(tmp_path):
    """A keypoint at 1e30 (a broken exporter): an error naming the file and the limit, not a crash
    inside the drawing with some frames written."""
    import json

    seq = PoseSequence([standing_pose().resized(64, 64)] * 3, fps=8)
    write_sequence(seq, tmp_path / "poses.json")
    data = json.loads((tmp_path / "poses.json").read_text())
    data["frames"][2]["people"][0]["pose_keypoints_2d"][3:5] = [1e30, 5.0]
    (tmp_path / "poses.json").write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, "-m", "pose_bridge", "draw", str(tmp_path / "poses.json"),
                           "--out", str(tmp_path / "png")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "poses.json, frame 2" in lines[0] and "10 canvas sizes" in lines[0], lines
    assert not (tmp_path / "png").exists()


def test_canvas_sizes_have_an_upper_bound(tmp_path, capsys):
    import json

    frame = {"canvas_width": 1e12, "canvas_height": 1e12, "people": []}
    (tmp_path / "huge.json").write_text(json.dumps(frame))
    assert main(["draw", str(tmp_path / "huge.json"), "--out", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err
    assert "huge.json" in err and "16384 pixels a side" in err and len(err.strip().splitlines()) == 1
    write_frame(standing_pose(), tmp_path / "ok.json")
    with pytest.raises(SystemExit):
        main(["draw", str(tmp_path / "ok.json"), "--out", str(tmp_path / "png"), "--size", "1000000x1000000"])
    assert "at most 16384" in capsys.readouterr().err
    assert not (tmp_path / "png").exists()
