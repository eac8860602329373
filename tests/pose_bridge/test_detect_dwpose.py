"""DWPose detection: pre/post-processing checked with small ONNX models whose outputs are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pose_bridge.detect import (  # noqa: E402
    MEAN,
    STD,
    DWPoseDetector,
    box_center_scale,
    crop_person,
    decode_simcc,
    letterbox,
    nms,
)
from pose_bridge.errors import ModelFileError  # noqa: E402
from pose_bridge.keypoints import BODY_INDEX  # noqa: E402


def constant_model(path, input_name, input_shape, outputs: dict[str, np.ndarray]) -> None:
    """An ONNX model with DWPose's input signature whose outputs are fixed arrays.

    Each output is constant + 0 * mean(input), so the input is really consumed.
    """
    nodes = [helper.make_node("ReduceMean", [input_name], ["mean"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    graph_outputs, initializers = [], []
    for name, value in outputs.items():
        initializers.append(numpy_helper.from_array(value.astype(np.float32), name=f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        graph_outputs, initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def yolox_output() -> np.ndarray:
    """8400 anchors (80x80, 40x40, 20x20 grids): one person, one weaker duplicate, one low score."""
    raw = np.zeros((1, 8400, 85), np.float32)

    def put(cell, dx, dy, w, h, obj, person):
        raw[0, cell, :4] = (dx, dy, math.log(w), math.log(h))
        raw[0, cell, 4], raw[0, cell, 5] = obj, person

    # Stride 8 cell (gx=40, gy=30): centre (40.5 * 8, 30.5 * 8) = (324, 244), size (20 * 8, 30 * 8).
    put(30 * 80 + 40, 0.5, 0.5, 20.0, 30.0, 0.9, 0.9)  # score 0.81
    put(30 * 80 + 41, 0.5, 0.5, 20.0, 30.0, 0.8, 0.6)  # overlaps the first: removed by NMS
    # Stride 16 cell (gx=5, gy=5): far away, score 0.25 > 0.1 but below the 0.3 kept.
    put(6400 + 5 * 40 + 5, 0.5, 0.5, 2.0, 2.0, 0.5, 0.5)
    return raw


# Person box in the 320x240 image: the detector box (244, 124, 404, 364) / r, with r = 640 / 320 = 2.
BOX = (122.0, 62.0, 202.0, 182.0)
# Crop: centre (162, 122); box 80x120 padded by 1.25 -> 100x150, grown to 3:4 -> 112.5 x 150.
CENTER, SCALE = (162.0, 122.0), (112.5, 150.0)


def simcc_outputs() -> dict[str, np.ndarray]:
    x = np.zeros((1, 133, 576), np.float32)
    y = np.zeros((1, 133, 768), np.float32)

    def peak(k, ix, iy, vx, vy):
        x[0, k, ix], y[0, k, iy] = vx, vy

    peak(0, 288, 384, 0.9, 0.7)  # nose at the crop centre
    peak(5, 192, 192, 0.8, 0.8)  # left shoulder
    peak(6, 384, 192, 0.6, 0.9)  # right shoulder
    peak(91, 100, 100, 0.5, 0.5)  # left hand wrist
    peak(132, 200, 300, 0.4, 0.9)  # right little finger tip
    peak(23, 300, 300, 0.95, 0.95)  # face point 0
    return {"simcc_x": x, "simcc_y": y}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dwpose")
    constant_model(folder / "yolox_l.onnx", "images", (1, 3, 640, 640), {"output": yolox_output()})
    constant_model(folder / "dw-ll_ucoco_384.onnx", "input", (1, 3, 384, 288), simcc_outputs())
    return folder


def test_detect_image_decodes_box_and_simcc_to_our_layout(models_dir):
    detector = DWPoseDetector(models_dir, device="cpu", detect_resolution=None)
    assert detector.providers == ["CPUExecutionProvider"]
    image = np.zeros((240, 320, 3), np.uint8)
    np.testing.assert_allclose(detector.boxes(image), [BOX], atol=1e-6)

    pose = detector.detect_image(image)
    assert pose.size == (320, 240)
    # x = loc / 2 / 288 * 112.5 + 162 - 56.25; y = loc / 2 / 384 * 150 + 122 - 75.
    np.testing.assert_allclose(pose.body[BODY_INDEX["nose"]], (162.0, 122.0, 0.7), atol=1e-5)  # min(0.9, 0.7)
    np.testing.assert_allclose(pose.body[BODY_INDEX["left_shoulder"]], (143.25, 84.5, 0.8), atol=1e-5)
    np.testing.assert_allclose(pose.body[BODY_INDEX["right_shoulder"]], (180.75, 84.5, 0.6), atol=1e-5)
    np.testing.assert_allclose(pose.body[BODY_INDEX["neck"]], (162.0, 84.5, 0.6), atol=1e-5)
    np.testing.assert_allclose(pose.left_hand[0], (100 / 576 * 112.5 + 105.75, 100 / 768 * 150 + 47, 0.5), atol=1e-5)
    np.testing.assert_allclose(pose.right_hand[20], (200 / 576 * 112.5 + 105.75, 300 / 768 * 150 + 47, 0.4), atol=1e-5)
    np.testing.assert_allclose(pose.face[0], (300 / 576 * 112.5 + 105.75, 300 / 768 * 150 + 47, 0.95), atol=1e-5)
    # Points the model gives no confidence are missing, with no position.
    assert not pose.body[BODY_INDEX["left_knee"]].any()
    assert not pose.left_hand[1:].any()


def test_box_center_scale_grows_the_short_side():
    center, scale = box_center_scale(np.array(BOX))
    np.testing.assert_allclose(center, CENTER)
    np.testing.assert_allclose(scale, SCALE)
    _, wide = box_center_scale(np.array([0, 0, 300, 100]))
    np.testing.assert_allclose(wide, (375.0, 500.0))  # 300 * 1.25 wide, height from the 3:4 aspect


def test_letterbox_scales_into_the_top_left_on_grey():
    image = np.full((50, 100, 3), 200, np.uint8)
    tensor, ratio = letterbox(image)
    assert tensor.shape == (3, 640, 640) and tensor.dtype == np.float32
    assert ratio == 6.4
    assert (tensor[:, :320, :] == 200).all()
    assert (tensor[:, 320:, :] == 114).all()


def test_crop_maps_the_box_centre_to_the_input_centre_and_normalises():
    image = np.zeros((240, 320, 3), np.uint8)
    image[122, 162] = (10, 100, 250)
    crop = crop_person(image, np.array(CENTER), np.array(SCALE))
    assert crop.shape == (3, 384, 288)
    np.testing.assert_allclose(crop[:, 192, 144], (np.array([10, 100, 250]) - MEAN) / STD, rtol=1e-5)
    np.testing.assert_allclose(crop[:, 0, 0], -MEAN / STD, rtol=1e-5)  # black


def test_simcc_confidence_is_the_smaller_maximum():
    x = np.zeros((2, 576), np.float32)
    y = np.zeros((2, 768), np.float32)
    x[0, 10], y[0, 20] = 0.3, 0.8
    points = decode_simcc(x, y, np.array([0.0, 0.0]), np.array([288.0, 384.0]))
    np.testing.assert_allclose(points[0], (5 - 144, 10 - 192, 0.3))
    assert points[1, 2] == 0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    assert nms(boxes, np.array([0.5, 0.9, 0.4]), 0.45) == [1, 2]


def test_no_person_gives_an_empty_pose(tmp_path):
    constant_model(tmp_path / "yolox_l.onnx", "images", (1, 3, 640, 640), {"output": np.zeros((1, 8400, 85))})
    constant_model(tmp_path / "dw-ll_ucoco_384.onnx", "input", (1, 3, 384, 288), simcc_outputs())
    pose = DWPoseDetector(tmp_path, device="cpu", detect_resolution=None).detect_image(np.zeros((60, 80, 3), np.uint8))
    assert pose.size == (80, 60) and not pose.body.any()


def test_missing_or_broken_model_files_say_where_to_get_them(tmp_path, models_dir):
    (tmp_path / "yolox_l.onnx").write_bytes((models_dir / "yolox_l.onnx").read_bytes())
    with pytest.raises(ModelFileError, match="dw-ll_ucoco_384.onnx") as info:
        DWPoseDetector(tmp_path)
    assert "huggingface.co/yzd-v/DWPose" in str(info.value)
    (tmp_path / "dw-ll_ucoco_384.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="cannot be loaded"):
        DWPoseDetector(tmp_path)
    with pytest.raises(ModelFileError, match="does not exist"):
        DWPoseDetector(tmp_path / "nowhere")


def test_detect_video(models_dir, tmp_path):
    pytest.importorskip("av")
    from pose_bridge.image_io import write_video

    write_video(tmp_path / "clip.mp4", [np.zeros((240, 320, 3), np.uint8)] * 3, fps=12)
    seen = []
    seq = DWPoseDetector(models_dir, device="cpu", detect_resolution=None).detect_video(tmp_path / "clip.mp4", on_frame=seen.append)
    assert len(seq) == 3 and seq.fps == 12 and seen == [0, 1, 2]
    np.testing.assert_allclose(seq[2].body[BODY_INDEX["nose"], :2], (162.0, 122.0), atol=1e-5)


def test_detection_resolution_maps_back_to_image_pixels(models_dir):
    # 256x192 with a short side of 384: the models see a 512x384 image (twice the size).
    detector = DWPoseDetector(models_dir, device="cpu", detect_resolution=384)
    image = np.zeros((192, 256, 3), np.uint8)
    # In the 512x384 image the letterbox scale is 640 / 512 = 1.25: box (244, 124, 404, 364) / 1.25,
    # then halved back to the original pixels.
    box = np.array([244, 124, 404, 364]) / 1.25 / 2
    np.testing.assert_allclose(detector.boxes(image), [box], atol=1e-6)
    nose = detector.detect_image(image).body[BODY_INDEX["nose"]]
    # The nose is at the crop centre, the box centre.
    np.testing.assert_allclose(nose[:2], ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), atol=1e-4)
