"""OpenPose JSON: single-frame files, folders of per-frame files, and our sequence file.

A frame file is OpenPose's own format (also written by ControlNet and ComfyUI)::

    {"people": [{"pose_keypoints_2d": [x, y, c, ...],        18 points (COCO-18)
                 "hand_left_keypoints_2d": [...],             21 points
                 "hand_right_keypoints_2d": [...],            21 points
                 "face_keypoints_2d": [...]}],                68 points
     "canvas_width": W, "canvas_height": H}

A sequence file (poses.json) holds every frame of one shot::

    {"format": "pose_bridge.sequence", "version": 1, "canvas_width": W, "canvas_height": H,
     "fps": 24.0, "frames": [<frame dict as above>, ...]}

Variants people have, and how they are read:

- Normalised coordinates (ControlNet/ComfyUI "POSE_KEYPOINT" data): a frame file is taken
  as normalised when every present point (confidence > 0) has 0 <= x <= 1 and 0 <= y <= 1;
  its coordinates are then multiplied by the canvas size. A real pixel pose never fits
  in one pixel; sequence files (ours) are always pixels and never guessed.
- No canvas size in the file: pass canvas_size=(W, H); without it the file is refused,
  because pixel coordinates mean nothing without their canvas.
- Missing or empty hand/face keys: those points are missing (confidence 0).
- OpenPose BODY_25 bodies (25 points) are converted to COCO-18 (mid-hip and feet dropped);
  OpenPose faces with 70 points (68 + 2 pupils) keep the first 68.
- Several people: one is picked, see pick_person().
- A top-level list of frame dicts (ComfyUI's batch output) is read as a sequence.

Writing keeps every value exactly: numbers are float32 in memory, and each is written
with the shortest decimal that reads back to the same float32.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from pose_bridge.errors import PoseDataError, PoseFileError
from pose_bridge.keypoints import (
    BODY_POINTS,
    DRAW_CONFIDENCE,
    FACE_POINTS,
    HAND_POINTS,
    MAX_CANVAS_SIDE,
    Pose,
    PoseSequence,
)

SEQUENCE_FORMAT = "pose_bridge.sequence"
SEQUENCE_VERSION = 1

# JSON key and expected point count of each part, in Pose field order.
PART_KEYS = {
    "body": ("pose_keypoints_2d", BODY_POINTS),
    "left_hand": ("hand_left_keypoints_2d", HAND_POINTS),
    "right_hand": ("hand_right_keypoints_2d", HAND_POINTS),
    "face": ("face_keypoints_2d", FACE_POINTS),
}

# OpenPose BODY_25 index of each COCO-18 point (BODY_25 adds mid-hip at 8 and six foot points).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

PERSON_RULES = ("largest", "confident")


# --------------------------------------------------------------------------- writing


def _numbers(points: np.ndarray) -> list[float]:
    """Flat [x, y, c, ...] with the shortest decimals that read back to the same float32."""
    values = np.asarray(points, dtype=np.float32).reshape(-1)
    # str() of a numpy float32 is its shortest round-tripping repr ("100.6", not 100.59999847).
    return [float(str(v)) for v in values]


def pose_to_dict(pose: Pose) -> dict[str, Any]:
    """One pose as an OpenPose frame dict with one person and the canvas size."""
    person = {key: _numbers(getattr(pose, part)) for part, (key, _) in PART_KEYS.items()}
    return {"people": [person], "canvas_width": pose.canvas_width, "canvas_height": pose.canvas_height}


def sequence_to_dict(seq: PoseSequence) -> dict[str, Any]:
    frames = []
    for pose in seq.frames:
        frame = pose_to_dict(pose)
        del frame["canvas_width"], frame["canvas_height"]  # stored once at the top
        frames.append(frame)
    return {
        "format": SEQUENCE_FORMAT,
        "version": SEQUENCE_VERSION,
        "canvas_width": seq.canvas_width,
        "canvas_height": seq.canvas_height,
        "fps": float(seq.fps),
        "frames": frames,
    }


def _write_json(path: Path, data: Any, indent: int | None) -> None:
    # Imported here: image_io holds the one atomic-write helper (and stays stdlib-only at import).
    from pose_bridge.image_io import atomic_write_bytes

    text = json.dumps(data, indent=indent, separators=None if indent else (",", ":"), allow_nan=False)
    atomic_write_bytes(Path(path), (text + "\n").encode("utf-8"))


def write_frame(pose: Pose, path: Path | str) -> None:
    """Write one pose as an OpenPose frame file (atomic: temp file, then rename)."""
    _write_json(Path(path), pose_to_dict(pose), indent=None)


def write_sequence(seq: PoseSequence, path: Path | str) -> None:
    """Write a sequence file (poses.json), atomically."""
    _write_json(Path(path), sequence_to_dict(seq), indent=None)


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise PoseFileError(f"{path} does not exist")
    if path.is_dir():
        raise PoseFileError(f"{path} is a folder, expected a JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PoseFileError(f"{path} cannot be read ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoseFileError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc


def _points(person: dict, part: str, source: str) -> np.ndarray:
    key, count = PART_KEYS[part]
    values = person.get(key)
    if values is None or (isinstance(values, list) and len(values) == 0):
        return np.zeros((count, 3), dtype=np.float32)
    if not isinstance(values, list):
        raise PoseFileError(f"{source}: {key} must be a list of numbers, got {type(values).__name__}")
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PoseFileError(f"{source}: {key} holds something that is not a number ({exc})") from exc
    if array.ndim != 1 or array.size % 3:
        raise PoseFileError(
            f"{source}: {key} must be a flat list of x, y, confidence triples; got {array.size} values"
        )
    array = array.reshape(-1, 3)
    n = array.shape[0]
    if part == "body" and n == 25:
        array = array[list(BODY25_TO_COCO18)]
    elif part == "face" and n == 70:
        array = array[:FACE_POINTS]
    elif n != count:
        accepted = f"{count}" + (" (or 25, OpenPose BODY_25)" if part == "body" else "")
        accepted += " (or 70, OpenPose's face with pupils)" if part == "face" else ""
        raise PoseFileError(f"{source}: {key} has {n} points, expected {accepted}")
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0]).tolist()
        raise PoseFileError(f"{source}: {key} has NaN or infinite values at points {rows}")
    return array.astype(np.float32)


def _person_size(body: np.ndarray) -> float:
    """Area of the box around the body points with confidence >= DRAW_CONFIDENCE (or any present)."""
    present = body[body[:, 2] >= DRAW_CONFIDENCE]
    if len(present) < 2:
        present = body[body[:, 2] > 0]
    if len(present) < 2:
        return 0.0
    width = float(present[:, 0].max() - present[:, 0].min())
    height = float(present[:, 1].max() - present[:, 1].min())
    return width * height


def pick_person(bodies: list[np.ndarray], person: str | int = "largest") -> int:
    """Index of the person to keep among several.

    person="largest": the biggest box around the confident body points (confidence >= 0.3),
    ties broken by the summed body confidence; this is the main subject in a shot.
    person="confident": the highest summed body confidence.
    person=<int>: that index in the file's "people" list.
    """
    if isinstance(person, (int, np.integer)) and not isinstance(person, bool):
        if not 0 <= person < len(bodies):
            raise PoseDataError(f"person {person} asked for, but the frame has {len(bodies)} people")
        return int(person)
    if person == "largest":
        keys = [(_person_size(b), float(b[:, 2].sum())) for b in bodies]
    elif person == "confident":
        keys = [(float(b[:, 2].sum()), _person_size(b)) for b in bodies]
    else:
        raise PoseDataError(f"person must be one of {PERSON_RULES} or an index, got {person!r}")
    return max(range(len(bodies)), key=lambda i: keys[i])


def _canvas(d: dict, canvas_size: tuple[int, int] | None, source: str) -> tuple[int, int]:
    width, height = d.get("canvas_width"), d.get("canvas_height")
    if width is None or height is None:
        if canvas_size is None:
            raise PoseFileError(
                f"{source}: no canvas_width/canvas_height in the file; pass the canvas size of the "
                f"image the poses belong to (e.g. --size WxH or canvas_size=(W, H))"
            )
        width, height = canvas_size
    try:
        fw, fh = float(width), float(height)
    except (TypeError, ValueError) as exc:
        raise PoseFileError(f"{source}: canvas size must be numbers, got {width!r} x {height!r}") from exc
    if not (math.isfinite(fw) and math.isfinite(fh)) or fw <= 0 or fh <= 0 or fw != int(fw) or fh != int(fh):
        raise PoseFileError(f"{source}: canvas size must be positive whole pixels, got {width} x {height}")
    if fw > MAX_CANVAS_SIDE or fh > MAX_CANVAS_SIDE:
        raise PoseFileError(
            f"{source}: canvas size {width} x {height} is beyond the limit of {MAX_CANVAS_SIDE} pixels a side"
        )
    return int(fw), int(fh)


def pose_from_dict(
    d: Any,
    canvas_size: tuple[int, int] | None = None,
    person: str | int = "largest",
    source: str = "",
    normalized: bool | None = None,
) -> Pose:
    """A Pose from an OpenPose frame dict (see the module docstring for the variants read).

    normalized: None detects 0..1 coordinates by the module's rule; True/False says it.
    canvas_size (W, H) is used when the dict has no canvas size of its own. A frame with
    nobody in it gives a pose with every point missing. With several people, `person`
    picks one (see pick_person). Raises PoseFileError naming `source` and the problem.
    """
    source = source or "pose data"
    if not isinstance(d, dict):
        raise PoseFileError(f"{source}: expected a JSON object with 'people', got {type(d).__name__}")
    people = d.get("people")
    if people is None:
        raise PoseFileError(f"{source}: no 'people' list; this is not an OpenPose frame")
    if not isinstance(people, list) or not all(isinstance(p, dict) for p in people):
        raise PoseFileError(f"{source}: 'people' must be a list of objects")
    width, height = _canvas(d, canvas_size, source)
    if not people:
        return Pose(width, height)

    parts_of = []
    for i, p in enumerate(people):
        where = f"{source}, person {i}" if len(people) > 1 else source
        parts_of.append({part: _points(p, part, where) for part in PART_KEYS})
    chosen = parts_of[pick_person([parts["body"] for parts in parts_of], person)]

    if normalized is None:
        present = np.concatenate([a[a[:, 2] > 0, :2] for a in chosen.values()])
        normalized = bool(len(present)) and present.min() >= 0.0 and present.max() <= 1.0
    if normalized:
        for array in chosen.values():
            array[:, 0] *= width
            array[:, 1] *= height
    try:
        return Pose(width, height, **chosen)
    except PoseDataError as exc:  # points far off the canvas: name the file
        raise PoseFileError(f"{source}: {exc}") from exc


def read_frame(path: Path | str, person: str | int = "largest", canvas_size: tuple[int, int] | None = None) -> Pose:
    """Read one OpenPose frame file."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict) and data.get("format") == SEQUENCE_FORMAT:
        raise PoseFileError(f"{path} is a sequence file, not a single frame; read it with read_sequence or load_poses")
    return pose_from_dict(data, canvas_size=canvas_size, person=person, source=str(path))


def sequence_from_dict(data: Any, source: str, fps: float | None = None) -> PoseSequence:
    if not isinstance(data, dict) or data.get("format") != SEQUENCE_FORMAT:
        raise PoseFileError(f"{source}: not a pose sequence file (its 'format' must be {SEQUENCE_FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or version > SEQUENCE_VERSION:
        raise PoseFileError(
            f"{source}: sequence version {version!r} is not supported (this version reads up to "
            f"{SEQUENCE_VERSION}); update pose_bridge"
        )
    canvas = _canvas(data, None, source)
    frames = data.get("frames")
    if not isinstance(frames, list):
        raise PoseFileError(f"{source}: 'frames' must be a list of OpenPose frames")
    if not frames:
        raise PoseFileError(f"{source}: the sequence has no frames; export the poses again")
    if fps is None:
        fps = data.get("fps", 24.0)
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not math.isfinite(fps) or fps <= 0:
        raise PoseFileError(f"{source}: fps must be a positive number, got {fps!r}")
    poses = []
    for i, frame in enumerate(frames):
        where = f"{source}, frame {i}"
        if isinstance(frame, dict) and ("canvas_width" in frame or "canvas_height" in frame):
            if _canvas(frame, None, where) != canvas:
                raise PoseFileError(f"{where}: canvas differs from the sequence's {canvas[0]}x{canvas[1]}")
        # Sequence files are always in pixels: no guessing.
        poses.append(pose_from_dict(frame, canvas_size=canvas, source=where, normalized=False))
    return PoseSequence(poses, float(fps))


def read_sequence(path: Path | str) -> PoseSequence:
    """Read a sequence file (poses.json) written by write_sequence."""
    path = Path(path)
    return sequence_from_dict(_read_json(path), str(path))


def _natural_key(path: Path) -> list:
    """Sort key that orders frame_2.json before frame_10.json."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def read_frame_folder(
    folder: Path | str,
    fps: float = 24.0,
    person: str | int = "largest",
    canvas_size: tuple[int, int] | None = None,
) -> PoseSequence:
    """Read a folder of per-frame OpenPose files (*.json), in natural order of their names.

    This is how OpenPose writes a video (name_000000000000_keypoints.json, ...). Every frame
    must have the same canvas size.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PoseFileError(f"{folder} is not a folder")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".json" and p.is_file()), key=_natural_key)
    if not files:
        raise PoseFileError(f"{folder} holds no .json pose files")
    poses = [read_frame(p, person=person, canvas_size=canvas_size) for p in files]
    try:
        return PoseSequence(poses, fps)
    except PoseDataError as exc:
        raise PoseFileError(f"{folder}: {exc}") from exc


def load_poses(
    path: Path | str,
    fps: float | None = None,
    canvas_size: tuple[int, int] | None = None,
    person: str | int = "largest",
) -> PoseSequence:
    """Read whatever holds poses: a sequence file, one frame file, a list of frames, or a folder.

    fps overrides the sequence file's own (a single frame or a folder gets 24 unless given).
    canvas_size is for frame files without one; person picks among several (see pick_person).
    """
    path = Path(path)
    if path.is_dir():
        return read_frame_folder(path, fps=fps or 24.0, person=person, canvas_size=canvas_size)
    data = _read_json(path)
    if isinstance(data, dict) and data.get("format") == SEQUENCE_FORMAT:
        return sequence_from_dict(data, str(path), fps=fps)
    if isinstance(data, list):
        if not data:
            raise PoseFileError(f"{path}: the list of frames is empty")
        poses = [
            pose_from_dict(f, canvas_size=canvas_size, person=person, source=f"{path}, frame {i}")
            for i, f in enumerate(data)
        ]
        try:
            return PoseSequence(poses, fps or 24.0)
        except PoseDataError as exc:
            raise PoseFileError(f"{path}: {exc}") from exc
    return PoseSequence([pose_from_dict(data, canvas_size=canvas_size, person=person, source=str(path))], fps or 24.0)
