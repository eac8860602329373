"""Pose detection from images and video with DWPose's ONNX models (through onnxruntime).

Two models, from the Hugging Face repository yzd-v/DWPose
(https://huggingface.co/yzd-v/DWPose), put into one folder:

- yolox_l.onnx: YOLOX-L person detector, input (1, 3, 640, 640), output (1, 8400, 85):
  per anchor (dx, dy, log w, log h) in grid units, objectness and 80 class scores (already
  sigmoid-ed). Input: the image letterboxed into 640x640 (scaled by r = min(640/h, 640/w),
  bilinear, placed top-left on grey 114), raw 0..255 values, no normalisation.
  Decoding: centre = (d + grid cell) * stride, size = exp(log size) * stride for the
  80x80, 40x40 and 20x20 grids of strides 8, 16, 32; score = objectness * class score;
  person class 0 above 0.1, greedy NMS at IoU 0.45 (areas with DWPose's +1 pixel), then
  boxes scoring above 0.3 are kept.
- dw-ll_ucoco_384.onnx: DWPose whole-body top-down model, input (1, 3, 384, 288) (h, w),
  outputs simcc_x (1, 133, 576) and simcc_y (1, 133, 768). Each box is widened by 1.25,
  made 288:384 in aspect by growing its short side, and cropped with an affine warp to
  288x384 (bilinear, black outside); pixels are normalised with mean (123.675, 116.28,
  103.53) and std (58.395, 57.12, 57.375). A keypoint is the argmax of each SimCC vector
  divided by the split ratio 2.0, mapped back by x = loc / 288 * box_w + cx - box_w / 2
  (same for y); its confidence is the smaller of the two maxima (mmpose's and DWPose's
  get_simcc_maximum keep the minimum).

Channel order and size: the models see the image in BGR order and with its short side
scaled to 512 (both sides rounded to multiples of 64), as Moore-AnimateAnyone and
controlnet_aux run DWPose; keypoints are mapped back to the original pixels.
channel_order="rgb" feeds RGB instead (DWPose's own ControlNet demo), and
detect_resolution=None detects at the image's own size.

COCO-WholeBody 133 points -> our layout: body from the 17 COCO points reordered to
OpenPose's 18 with the neck made by keypoints.neck_from_shoulders (the mean of the
shoulders, present only when both are; the same rule poses from a rig use, see
docs/skeleton.md), feet (17-22) dropped, face 23-90 (68 points), left hand 91-111, right
hand 112-132.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pose_bridge.errors import ModelFileError, PoseDataError
from pose_bridge.keypoints import Pose, PoseSequence, set_neck_from_shoulders

logger = logging.getLogger(__name__)

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
MODELS_URL = "https://huggingface.co/yzd-v/DWPose"

DET_INPUT_SIZE = (640, 640)  # (h, w)
POSE_INPUT_SIZE = (288, 384)  # (w, h)
STRIDES = (8, 16, 32)
LETTERBOX_FILL = 114
DET_SCORE_THRESHOLD = 0.1
DET_NMS_THRESHOLD = 0.45
DET_KEEP_THRESHOLD = 0.3
BOX_PADDING = 1.25
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT_RATIO = 2.0

# COCO-17 index of each OpenPose body point (None: the neck, made from the shoulders).
COCO_TO_OPENPOSE = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE_SLICE = slice(23, 91)
LEFT_HAND_SLICE = slice(91, 112)
RIGHT_HAND_SLICE = slice(112, 133)


# --------------------------------------------------------------------------- image helpers


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize with pixel-centre alignment (cv2.INTER_LINEAR's mapping), float32 out."""
    src_h, src_w = image.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) * (src_h / height) - 0.5, 0, src_h - 1)
    xs = np.clip((np.arange(width) + 0.5) * (src_w / width) - 0.5, 0, src_w - 1)
    return _sample(image.astype(np.float32), xs[None, :].repeat(height, 0), ys[:, None].repeat(width, 1), clamp=True)


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray, clamp: bool = False) -> np.ndarray:
    """Bilinear samples of image at float pixel coordinates; outside the image reads black."""
    h, w = image.shape[:2]
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0)[..., None].astype(np.float32)
    fy = (y - y0)[..., None].astype(np.float32)
    out = np.zeros(x.shape + image.shape[2:], dtype=np.float32)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            if clamp:
                xi, yi = np.clip(xi, 0, w - 1), np.clip(yi, 0, h - 1)
                inside = np.ones(x.shape, dtype=bool)
            else:
                inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            values = image[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)].astype(np.float32)
            out += np.where(inside[..., None], values, 0.0) * wx * wy
    return out


def letterbox(image: np.ndarray, size: tuple[int, int] = DET_INPUT_SIZE) -> tuple[np.ndarray, float]:
    """The detector input (3, h, w) float32 and the scale r from image to input pixels."""
    h, w = image.shape[:2]
    r = min(size[0] / h, size[1] / w)
    new_w, new_h = int(w * r), int(h * r)
    padded = np.full((size[0], size[1], 3), LETTERBOX_FILL, dtype=np.float32)
    # DWPose casts the resized image back to uint8 before padding.
    padded[:new_h, :new_w] = np.clip(np.rint(resize_bilinear(image, new_w, new_h)), 0, 255)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)), r


def decode_yolox(raw: np.ndarray, size: tuple[int, int] = DET_INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX raw output (N, 5 + classes) -> boxes (N, 4) x1 y1 x2 y2 in input pixels, person scores (N,)."""
    grids, strides = [], []
    for stride in STRIDES:
        gh, gw = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(gw), np.arange(gh))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), stride))
    grid = np.concatenate(grids).astype(np.float64)
    stride = np.concatenate(strides).astype(np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] != len(grid) or raw.shape[1] < 6:
        raise ModelFileError(
            f"the detector returned shape {raw.shape}; expected ({len(grid)}, 85) for a {size[1]}x{size[0]} "
            f"YOLOX input: is {DETECTOR_FILE} the DWPose YOLOX model?"
        )
    centre = (raw[:, :2] + grid) * stride
    wh = np.exp(raw[:, 2:4]) * stride
    boxes = np.concatenate([centre - wh / 2.0, centre + wh / 2.0], axis=1)
    scores = raw[:, 4] * raw[:, 5]
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= threshold]
    return keep


def person_boxes(raw: np.ndarray, ratio: float, size: tuple[int, int] = DET_INPUT_SIZE) -> np.ndarray:
    """Person boxes (M, 4) in image pixels from the detector's raw output, best first."""
    boxes, scores = decode_yolox(raw, size)
    candidates = scores > DET_SCORE_THRESHOLD
    boxes, scores = boxes[candidates] / ratio, scores[candidates]
    if not len(boxes):
        return np.zeros((0, 4))
    keep = [i for i in nms(boxes, scores, DET_NMS_THRESHOLD) if scores[i] > DET_KEEP_THRESHOLD]
    return boxes[keep].reshape(-1, 4)


def box_center_scale(box: np.ndarray, input_size: tuple[int, int] = POSE_INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (w, h) of the crop for a box: padded by 1.25, then grown to the input's aspect."""
    x1, y1, x2, y2 = [float(v) for v in box]
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    w, h = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = input_size[0] / input_size[1]
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return center, scale


def crop_person(image: np.ndarray, center: np.ndarray, scale: np.ndarray,
                input_size: tuple[int, int] = POSE_INPUT_SIZE) -> np.ndarray:
    """The pose model input (3, h, w) float32: the box warped to the input size, normalised."""
    w, h = input_size
    # Output pixel (u, v) reads image pixel centre + ((u, v) - size / 2) * scale / size.
    xs = center[0] + (np.arange(w) - w / 2.0) * (scale[0] / w)
    ys = center[1] + (np.arange(h) - h / 2.0) * (scale[1] / h)
    crop = _sample(image, xs[None, :].repeat(h, 0), ys[:, None].repeat(w, 1))
    crop = (crop - MEAN) / STD
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, center: np.ndarray, scale: np.ndarray,
                 input_size: tuple[int, int] = POSE_INPUT_SIZE) -> np.ndarray:
    """(K, Wx), (K, Wy) SimCC vectors of one person -> (K, 3) image x, y, confidence."""
    locs = np.stack([simcc_x.argmax(axis=1), simcc_y.argmax(axis=1)], axis=1).astype(np.float64)
    conf = np.minimum(simcc_x.max(axis=1), simcc_y.max(axis=1)).astype(np.float64)
    locs /= SIMCC_SPLIT_RATIO
    xy = locs / np.asarray(input_size, dtype=np.float64) * scale + center - scale / 2.0
    conf = np.where(conf > 0, conf, 0.0)
    return np.concatenate([xy, conf[:, None]], axis=1)


def wholebody_to_pose(points: np.ndarray, width: int, height: int) -> Pose:
    """133 COCO-WholeBody points (x, y, confidence) -> our Pose (OpenPose layout)."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (133, 3):
        raise PoseDataError(f"expected 133 COCO-WholeBody points, got shape {points.shape}")
    body = np.zeros((18, 3))
    for ours, coco in enumerate(COCO_TO_OPENPOSE):
        if coco is not None:
            body[ours] = points[coco]
    set_neck_from_shoulders(body)
    parts = {
        "body": body,
        "left_hand": points[LEFT_HAND_SLICE],
        "right_hand": points[RIGHT_HAND_SLICE],
        "face": points[FACE_SLICE],
    }
    for array in parts.values():
        array[array[:, 2] <= 0] = 0.0  # no confidence: no position
    return Pose(width, height, **{k: v.astype(np.float32) for k, v in parts.items()})


# --------------------------------------------------------------------------- the detector


def _session(path: Path, device: str):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelFileError("pose detection needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from exc
    if not path.is_file():
        raise ModelFileError(
            f"{path} is missing: detection needs {DETECTOR_FILE} and {POSE_FILE} in one folder; "
            f"download them from {MODELS_URL} and pass that folder (--models DIR)"
        )
    wants_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if wants_cuda else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise ModelFileError(f"{path} cannot be loaded as an ONNX model ({exc}); download it again from {MODELS_URL}") from exc
    if wants_cuda and "CUDAExecutionProvider" not in session.get_providers():
        logger.warning("CUDA was asked for but onnxruntime runs %s on the CPU", path.name)
    if device == "cuda" and not wants_cuda:
        logger.warning("device 'cuda' asked for, but this onnxruntime has no CUDA provider; using the CPU")
    return session


def _input_hw(session, default: tuple[int, int]) -> tuple[int, int]:
    shape = session.get_inputs()[0].shape
    h, w = shape[2], shape[3]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else default


class DWPoseDetector:
    """DWPose: YOLOX person boxes, then whole-body keypoints per box (see the module docstring)."""

    def __init__(
        self, models_dir: Path | str, device: str = "auto", channel_order: str = "bgr",
        detect_resolution: int | None = 512,
    ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise PoseDataError(f"device must be auto, cpu or cuda, got {device!r}")
        if channel_order not in ("bgr", "rgb"):
            raise PoseDataError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        self.models_dir = Path(models_dir)
        if not self.models_dir.is_dir():
            raise ModelFileError(
                f"model folder {self.models_dir} does not exist; put {DETECTOR_FILE} and {POSE_FILE} "
                f"from {MODELS_URL} into a folder and pass it"
            )
        if detect_resolution is not None and detect_resolution < 64:
            raise PoseDataError(f"detect_resolution must be at least 64 (or None), got {detect_resolution}")
        self.channel_order = channel_order
        self.detect_resolution = detect_resolution
        self.detector = _session(self.models_dir / DETECTOR_FILE, device)
        self.pose_model = _session(self.models_dir / POSE_FILE, device)
        self.det_size = _input_hw(self.detector, DET_INPUT_SIZE)
        pose_h, pose_w = _input_hw(self.pose_model, (POSE_INPUT_SIZE[1], POSE_INPUT_SIZE[0]))
        self.pose_size = (pose_w, pose_h)

    @property
    def providers(self) -> list[str]:
        return list(self.pose_model.get_providers())

    def _prepare(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
            raise PoseDataError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
        return rgb[:, :, ::-1] if self.channel_order == "bgr" else rgb

    def _working_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The image at the detection resolution, and the (x, y) factors back to the original.

        As Moore-AnimateAnyone and controlnet_aux run DWPose: the short side is scaled to
        detect_resolution and both sides rounded to multiples of 64 (Lanczos up, box filter down).
        """
        height, width = image.shape[:2]
        if self.detect_resolution is None:
            return image, np.ones(2)
        k = self.detect_resolution / min(height, width)
        new_w = max(64, int(np.round(width * k / 64.0)) * 64)
        new_h = max(64, int(np.round(height * k / 64.0)) * 64)
        if (new_w, new_h) == (width, height):
            return image, np.ones(2)
        from PIL import Image

        resample = Image.Resampling.LANCZOS if k > 1 else Image.Resampling.BOX
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), resample))
        return resized, np.array([width / new_w, height / new_h])

    def _boxes(self, image: np.ndarray) -> np.ndarray:
        tensor, ratio = letterbox(image, self.det_size)
        raw = self.detector.run(None, {self.detector.get_inputs()[0].name: tensor[None]})[0]
        return person_boxes(raw[0], ratio, self.det_size)

    def boxes(self, rgb: np.ndarray) -> np.ndarray:
        """Person boxes (M, 4) x1 y1 x2 y2 in image pixels, best first."""
        work, back = self._working_image(self._prepare(rgb))
        return self._boxes(work) * np.tile(back, 2)

    def detect_people(self, rgb: np.ndarray) -> list[tuple[np.ndarray, Pose]]:
        """Every detected person as (box, Pose) in image pixels, best box first."""
        image = self._prepare(rgb)
        height, width = image.shape[:2]
        work, back = self._working_image(image)
        people = []
        input_name = self.pose_model.get_inputs()[0].name
        for box in self._boxes(work):
            center, scale = box_center_scale(box, self.pose_size)
            crop = crop_person(work, center, scale, self.pose_size)
            simcc_x, simcc_y = self.pose_model.run(None, {input_name: crop[None]})[:2]
            points = decode_simcc(simcc_x[0], simcc_y[0], center, scale, self.pose_size)
            points[:, :2] *= back
            people.append((box * np.tile(back, 2), wholebody_to_pose(points, width, height)))
        return people

    def detect_image(self, rgb: np.ndarray) -> Pose:
        """The pose of the person with the largest box (an empty pose if nobody is found)."""
        people = self.detect_people(rgb)
        if not people:
            height, width = np.asarray(rgb).shape[:2]
            return Pose(width, height)
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b, _ in people]
        return people[int(np.argmax(areas))][1]

    def detect_frames(self, frames: Iterable[np.ndarray], fps: float,
                      on_frame: Callable[[int], None] | None = None) -> PoseSequence:
        poses = []
        for i, frame in enumerate(frames):
            poses.append(self.detect_image(frame))
            if on_frame is not None:
                on_frame(i)
        if not poses:
            raise PoseDataError("the video has no frames")
        return PoseSequence(poses, fps)

    def detect_video(self, path: Path | str, on_frame: Callable[[int], None] | None = None) -> PoseSequence:
        """Poses of every frame of a video file (PyAV), at the video's frame rate."""
        from pose_bridge.image_io import read_video, video_fps

        return self.detect_frames(read_video(path), video_fps(path), on_frame=on_frame)
