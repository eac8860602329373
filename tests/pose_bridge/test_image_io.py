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
    rgba = np.concatenate([image, np.full((9, 11, 1), 7, np.uint8)], axis=2)
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
