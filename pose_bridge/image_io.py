"""Image and video files: PNG, any image Pillow reads, and H.264 mp4 through PyAV.

Writing a PNG needs nothing but the standard library (zlib), so the add-on can write job
folders inside Blender, whose Python has numpy but no Pillow. Reading images in other
formats needs Pillow; video needs PyAV. Both are imported only when used.

Every writer writes a temporary file next to the target and renames it over the target
(pose_bridge.files), so a crash or an error never leaves half a file where a user's file was.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pose_bridge.errors import PoseDataError, PoseFileError
from pose_bridge.files import atomic_path, atomic_write_bytes  # noqa: F401 (also used from here by others)

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise PoseDataError(f"expected an RGB image array (H, W, 3) of uint8, got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray, level: int = 6) -> bytes:
    """An 8-bit RGB PNG file's bytes, made with zlib only (rows unfiltered)."""
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    rows = np.zeros((height, 1 + width * 3), dtype=np.uint8)  # filter byte 0 ("None") per row
    rows[:, 1:] = rgb.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bit, colour type 2 (RGB)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _chunk(b"IEND", b"")


# Bigger images are refused with a message rather than decoded (a 20000 x 20000 picture is
# 1.2 GB of pixels before anything is done with it; the model works at about 512 x 768).
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 8192 * 8192


def check_image_size(width: int, height: int, source: str) -> None:
    """Raise PoseFileError when an image of width x height is beyond what is read."""
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise PoseFileError(
            f"{source} is {width}x{height} pixels, more than the limit of {MAX_IMAGE_SIDE} pixels a side "
            f"and {MAX_IMAGE_PIXELS // 1_000_000} megapixels; scale it down (the model works at about 512x768)"
        )


def flatten_to_rgb8(pixels: np.ndarray, what: str = "image") -> np.ndarray:
    """Any image array as (H, W, 3) uint8 RGB, by the one rule every reader here follows.

    pixels: (H, W) or (H, W, 1|2|3|4) of uint8 (0..255), uint16 (0..65535, 16-bit files) or
    float (0..1). Grey is expanded to RGB, 16 bits are scaled to 8 (65535 -> 255, not
    clipped), and transparency (the last channel of 2 or 4) is composited onto white: the
    released weights were trained on people in front of plain light backdrops, so a
    transparent background must read as light, never as black.
    """
    array = np.asarray(pixels)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape[:2]:
        raise PoseDataError(f"{what} must be an (H, W) or (H, W, 1-4) image array, got shape {array.shape}")
    if array.dtype == np.uint8:
        scale = 255.0
    elif array.dtype == np.uint16:
        scale = 65535.0
    elif array.dtype.kind == "f":
        scale = 1.0
    else:
        raise PoseDataError(f"{what} must hold uint8, uint16 or float values, got {array.dtype}")
    channels = array.shape[2]
    colour = array[:, :, :3] if channels >= 3 else np.repeat(array[:, :, :1], 3, axis=2)
    if channels in (2, 4):
        alpha = np.clip(array[:, :, -1:].astype(np.float32) / np.float32(scale), 0.0, 1.0)
        values = colour.astype(np.float32) * (np.float32(255.0 / scale) * alpha) + np.float32(255.0) * (1.0 - alpha)
    elif array.dtype == np.uint8:
        return np.ascontiguousarray(colour)
    else:
        values = colour.astype(np.float32) * np.float32(255.0 / scale)
    return np.ascontiguousarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def decode_png(data: bytes, source: str = "PNG") -> np.ndarray:
    """Decode a non-interlaced PNG without Pillow: (H, W, 3) uint8 RGB, by flatten_to_rgb8's rule.

    Grey, grey+alpha, RGB and RGBA at 8 or 16 bits per sample (what encode_png, Pillow,
    Blender and most renderers write). Palette and interlaced files raise PoseFileError asking
    for Pillow; read_image uses Pillow when it can.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise PoseFileError(f"{source} is not a PNG file")
    pos, header, idat = len(PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise PoseFileError(f"{source} has no PNG header")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth not in (8, 16) or channels is None or interlace:
        raise PoseFileError(f"{source}: this PNG kind needs Pillow to be read (install pillow)")
    check_image_size(width, height, source)
    stride = channels * depth // 8  # bytes per pixel: the filters' unit
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
        rows = raw.reshape(height, 1 + width * stride)
    except (zlib.error, ValueError) as exc:
        raise PoseFileError(f"{source} is damaged ({exc})") from exc
    out = np.empty((height, width * stride), dtype=np.uint8)
    previous = np.zeros(width * stride, dtype=np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            current = line
        elif kind == 2:  # Up
            current = line + previous
        elif kind == 1:  # Sub: a running sum per byte of the pixel
            current = np.cumsum(line.reshape(width, stride).astype(np.int64), axis=0).astype(np.uint8).reshape(-1)
        elif kind in (3, 4):  # Average, Paeth: pixel by pixel (slow, but only without Pillow)
            current = _unfilter_sequential(kind, line, previous, stride)
        else:
            raise PoseFileError(f"{source} is damaged (unknown row filter {kind})")
        out[y] = current
        previous = current
    pixels = out.view(">u2").astype(np.uint16) if depth == 16 else out
    return flatten_to_rgb8(pixels.reshape(height, width, channels), source)


def _unfilter_sequential(kind: int, line: np.ndarray, previous: np.ndarray, channels: int) -> np.ndarray:
    line = line.reshape(-1, channels).astype(np.int64)
    up = previous.reshape(-1, channels).astype(np.int64)
    out = np.zeros_like(line)
    left = np.zeros(channels, dtype=np.int64)
    up_left = np.zeros(channels, dtype=np.int64)
    for i in range(len(line)):
        if kind == 3:
            predictor = (left + up[i]) // 2
        else:
            p = left + up[i] - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - up[i]), np.abs(p - up_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up[i], up_left))
        out[i] = (line[i] + predictor) % 256
        left, up_left = out[i], up[i]
    return out.astype(np.uint8).reshape(-1)


def pil_to_rgb8(image, source: str = "image") -> np.ndarray:
    """A Pillow image as (H, W, 3) uint8 RGB by flatten_to_rgb8's rule (16-bit grey scaled, not clipped)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (Pillow's convert("RGB") would clip every value above 255 to white).
        return flatten_to_rgb8(np.clip(np.asarray(image), 0, 65535).astype(np.uint16), source)
    if "A" in image.getbands() or "transparency" in image.info:
        return flatten_to_rgb8(np.asarray(image.convert("RGBA")), source)
    return flatten_to_rgb8(np.asarray(image.convert("RGB")), source)


def write_png(path: Path | str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as a PNG file, atomically."""
    atomic_write_bytes(path, encode_png(rgb))


def read_image(path: Path | str) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array (flatten_to_rgb8's rule: grey
    expanded, 16 bits scaled, transparency composited onto white).

    Images beyond MAX_IMAGE_SIDE / MAX_IMAGE_PIXELS raise PoseFileError before decoding.
    """
    path = Path(path)
    if not path.is_file():
        raise PoseFileError(f"image {path} does not exist")
    try:
        from PIL import Image
    except ImportError:
        return decode_png(path.read_bytes(), str(path))
    try:
        with Image.open(path) as image:
            check_image_size(image.width, image.height, str(path))
            return pil_to_rgb8(image, str(path))
    except Image.DecompressionBombError as exc:  # Pillow's own, stricter-than-ours check on opening
        raise PoseFileError(
            f"{path} is beyond the limit of {MAX_IMAGE_SIDE} pixels a side and "
            f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels ({exc}); scale it down (the model works at about 512x768)"
        ) from exc
    except OSError as exc:
        raise PoseFileError(f"{path} cannot be read as an image ({exc})") from exc


def _import_av():
    try:
        import av
    except ImportError as exc:
        raise PoseFileError("reading or writing video needs PyAV: pip install av") from exc
    return av


def write_video(path: Path | str, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> int:
    """Encode RGB uint8 frames as an H.264 (yuv420p) mp4, atomically. Returns the frame count.

    yuv420p needs even sizes: an odd width or height gets one black pixel column/row more.
    """
    av = _import_av()
    from fractions import Fraction

    path = Path(path)
    count = 0
    with atomic_path(path, suffix=path.suffix or ".mp4") as tmp:
        container = av.open(str(tmp), mode="w")
        try:
            stream = None
            for frame in frames:
                frame = _check_rgb(frame)
                if stream is None:
                    height, width = frame.shape[:2]
                    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height = width + width % 2, height + height % 2
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf)}
                if frame.shape[:2] != (height, width):
                    raise PoseDataError(
                        f"video frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first was {width}x{height}"
                    )
                if width % 2 or height % 2:
                    frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise PoseDataError(f"no frames to write to {path}")
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return count


def read_video(path: Path | str) -> Iterator[np.ndarray]:
    """The frames of a video file as RGB uint8 arrays, one at a time."""
    av = _import_av()
    path = Path(path)
    if not path.is_file():
        raise PoseFileError(f"video {path} does not exist")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise PoseFileError(f"{path} cannot be opened as a video ({exc})") from exc
    with container:
        if not container.streams.video:
            raise PoseFileError(f"{path} has no video stream")
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def video_fps(path: Path | str) -> float:
    """Frames per second of a video file's first video stream."""
    av = _import_av()
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise PoseFileError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except av.error.FFmpegError as exc:
        raise PoseFileError(f"{path} cannot be opened as a video ({exc})") from exc
    if not rate:
        raise PoseFileError(f"{path}: the video does not say its frame rate")
    return float(rate)


def video_frame_count(path: Path | str) -> int | None:
    """Number of frames the container claims (None if it does not say): for progress bars."""
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            frames = container.streams.video[0].frames if container.streams.video else 0
    except av.error.FFmpegError:
        return None
    return frames or None
