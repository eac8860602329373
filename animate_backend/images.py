"""Image helpers the pipeline and the training data share: RGB arrays, letterboxing, padding.

Every image is fitted into the output size with its aspect kept and the rest padded
("contain", the mapping of `pose_bridge.keypoints.Pose.fitted`), never cropped or stretched.
"""

from __future__ import annotations

import numpy as np
import PIL.Image

from animate_backend.errors import InputError


def to_rgb_array(image: PIL.Image.Image | np.ndarray, what: str = "image") -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from a PIL image or a uint8 (H, W, 3|4) array.

    Transparency (a render with a transparent film, say) is composited onto white, by the one
    rule every image reader follows (pose_bridge.image_io.flatten_to_rgb8).
    """
    from pose_bridge.image_io import flatten_to_rgb8, pil_to_rgb8

    if isinstance(image, PIL.Image.Image):
        return pil_to_rgb8(image, what)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputError(
            f"{what} must be a PIL image or a uint8 array of shape (H, W, 3), "
            f"got {array.dtype} array of shape {array.shape}"
        )
    return flatten_to_rgb8(array, what)


def border_colour(image: np.ndarray) -> tuple[int, int, int]:
    """Mean colour of the outermost pixels: padding in it reads as more background."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float64)
    return tuple(int(round(c)) for c in border.mean(axis=0))


def letterbox(image: np.ndarray, width: int, height: int, fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Fit `image` into width x height with its aspect kept, centred, the rest filled with `fill`.

    The same mapping as `Pose.fitted(width, height)`, so skeletons drawn from fitted poses and
    letterboxed images line up.
    """
    src_h, src_w = image.shape[:2]
    if (src_w, src_h) == (width, height):
        return image
    scale = min(width / src_w, height / src_h)
    new_w = max(1, round(src_w * scale))
    new_h = max(1, round(src_h * scale))
    resized = np.asarray(PIL.Image.fromarray(image).resize((new_w, new_h), PIL.Image.Resampling.LANCZOS))
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = fill
    left = round((width - src_w * scale) / 2.0)
    top = round((height - src_h * scale) / 2.0)
    left = min(max(left, 0), width - new_w)
    top = min(max(top, 0), height - new_h)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


def pad_to_square(image: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    height, width = image.shape[:2]
    side = max(height, width)
    return letterbox(image, side, side, fill) if height != width else image
