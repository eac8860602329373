"""PNG (stdlib), images through Pillow, and mp4 through PyAV."""

from __future__ import annotations

import numpy as np
import pytest

from pose_bridge.errors import PoseDataError, PoseFileError
from pose_bridge.image_io import decode_png, encode_png, read_image, read_video, video_fps, write_png, write_video


def test_png_round_trip_without_and_with_pillow(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", image)
    np.testing.assert_array_equal(decode_png((tmp_path / "a.png").read_bytes()), image)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), image)


def test_decode_png_reads_pillow_pngs_with_row_filters(tmp_path):
    from PIL import Image

    image = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    image[:, :6] = 40  # flat areas make Pillow pick Sub/Up filters
    Image.fromarray(image).save(tmp_path / "p.png")
    np.testing.assert_array_equal(decode_png((tmp_path / "p.png").read_bytes()), image)
    rgba = np.concatenate([image, np.full((9, 11, 1), 255, np.uint8)], axis=2)  # opaque: colours as they are
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(decode_png((tmp_path / "a.png").read_bytes()), image)


def test_bad_images(tmp_path):
    with pytest.raises(PoseFileError, match="does not exist"):
        read_image(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(PoseFileError, match="cannot be read"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(PoseDataError):
        encode_png(np.zeros((4, 4), np.uint8))


def test_video_round_trip_with_odd_size(tmp_path):
    pytest.importorskip("av")
    frames = [np.full((15, 21, 3), v, np.uint8) for v in (0, 128, 255)]
    assert write_video(tmp_path / "v.mp4", frames, fps=10) == 3
    back = list(read_video(tmp_path / "v.mp4"))
    assert len(back) == 3 and back[0].shape == (16, 22, 3)
    assert abs(int(back[1][5, 5, 0]) - 128) <= 3
    assert video_fps(tmp_path / "v.mp4") == 10
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_a_failed_video_leaves_no_file(tmp_path):
    pytest.importorskip("av")
    frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(PoseDataError, match="first was 16x16"):
        write_video(tmp_path / "v.mp4", frames, fps=10)
    assert list(tmp_path.iterdir()) == []


def test_decode_png_average_filter():
    """Rows filtered by hand with PNG's Average filter (type 3), which Pillow rarely picks."""
    import struct
    import zlib

    image = np.random.default_rng(3).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    raw = image.reshape(4, 9).astype(int)
    rows = b""
    for y in range(4):
        filtered = []
        for i in range(9):
            left = raw[y, i - 3] if i >= 3 else 0
            up = raw[y - 1, i] if y else 0
            filtered.append((raw[y, i] - (left + up) // 2) % 256)
        rows += bytes([3] + filtered)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 4, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    np.testing.assert_array_equal(decode_png(png), image)


def png_bytes(pixels: np.ndarray, colour_type: int) -> bytes:
    """A PNG file of uint8 or uint16 (big-endian on disk) pixels, rows unfiltered: any kind, for tests."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    data = pixels.astype(">u2").tobytes() if depth == 16 else pixels.tobytes()
    row = len(data) // height
    raw = b"".join(b"\x00" + data[y * row:(y + 1) * row] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("colour_type, shape", [(0, (4, 6)), (2, (4, 6, 3)), (6, (4, 6, 4))])
def test_16_bit_pngs_are_scaled_not_clipped_to_white(tmp_path, colour_type, shape):
    """16-bit renders (Blender's "16 bit" PNG option) read as what they show, with and without Pillow."""
    values = np.linspace(0, 65535, int(np.prod(shape[:2]))).astype(np.uint16).reshape(shape[:2])
    pixels = np.repeat(values[:, :, None], shape[2], axis=2) if len(shape) == 3 else values
    if colour_type == 6:
        pixels[:, :, 3] = 65535  # opaque
    (tmp_path / "deep.png").write_bytes(png_bytes(pixels, colour_type))
    expected = np.repeat(np.round(values / 257.0).astype(np.uint8)[:, :, None], 3, axis=2)

    np.testing.assert_allclose(decode_png((tmp_path / "deep.png").read_bytes()), expected, atol=0)
    # Pillow keeps 16-bit grey as 16 bits but cuts 16-bit colour to its high byte: within 1.
    np.testing.assert_allclose(read_image(tmp_path / "deep.png"), expected, atol=1)
    assert read_image(tmp_path / "deep.png")[-1, -1].tolist() == [255, 255, 255]
    assert read_image(tmp_path / "deep.png")[0, 0].tolist() == [0, 0, 0]


def test_transparency_is_composited_onto_white_by_every_reader(tmp_path):
    """One rule: read_image (Pillow or not), the pipeline's own preprocessing, grey+alpha too."""
    from PIL import Image

    pytest.importorskip("torch", reason="the pipeline's preprocessing needs the backend's environment")
    from animate_backend.images import to_rgb_array

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:, :, :3] = (200, 40, 10)
    rgba[:, :2, 3] = 255  # left half opaque
    rgba[:, 2:, 3] = 0  # right half transparent (its colour is black underneath)
    rgba[0, 3] = (0, 0, 0, 128)  # half see-through black: mid grey
    Image.fromarray(rgba).save(tmp_path / "cut_out.png")
    expected = np.full((4, 4, 3), 255, np.uint8)
    expected[:, :2] = (200, 40, 10)
    expected[0, 3] = 127

    for image in (read_image(tmp_path / "cut_out.png"), decode_png((tmp_path / "cut_out.png").read_bytes()),
                  to_rgb_array(Image.open(tmp_path / "cut_out.png")), to_rgb_array(rgba)):
        np.testing.assert_allclose(image, expected, atol=1)

    grey_alpha = np.zeros((2, 2, 2), np.uint8)
    grey_alpha[0] = (30, 255)
    (tmp_path / "la.png").write_bytes(png_bytes(grey_alpha, 4))
    for image in (read_image(tmp_path / "la.png"), decode_png((tmp_path / "la.png").read_bytes())):
        assert image[0].tolist() == [[30, 30, 30]] * 2 and image[1].tolist() == [[255, 255, 255]] * 2
