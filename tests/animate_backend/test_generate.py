"""`generate`: a video from a reference image and poses in each accepted form, no job folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from animate_backend.errors import InputError
from animate_backend.generate import generate, load_driving_poses, output_size
from animate_backend.pipeline_cache import PipelineCache
from pose_bridge.drawing import draw_pose
from pose_bridge.image_io import write_png, write_video
from pose_bridge.keypoints import Pose, PoseSequence
from pose_bridge.openpose_json import write_frame, write_sequence

STANDING = np.array([
    (50, 12), (50, 24), (40, 24), (36, 38), (34, 52), (60, 24), (64, 38), (66, 52),
    (44, 54), (43, 72), (43, 90), (56, 54), (57, 72), (57, 90), (47, 10), (53, 10), (44, 12), (56, 12),
], dtype=np.float32)


def figure(width: int, height: int, raise_arm: float) -> Pose:
    body = np.ones((18, 3), np.float32)
    body[:, 0] = STANDING[:, 0] * width / 100
    body[:, 1] = (STANDING[:, 1] - np.where(np.arange(18) == 4, 30 * raise_arm, 0)) * height / 100
    return Pose(width, height, body=body)


def sequence(frames: int = 3, fps: float = 10.0) -> PoseSequence:
    return PoseSequence([figure(64, 48, i / frames) for i in range(frames)], fps)


@pytest.fixture(scope="module")
def pipelines() -> PipelineCache:
    return PipelineCache()


@pytest.fixture
def reference(tmp_path) -> Path:
    """A 62x46 picture: the output size rounds to 64x48."""
    y, x = np.mgrid[0:46, 0:62]
    rgb = np.stack([x * 4, y * 5, np.full_like(x, 120)], -1).astype(np.uint8)
    path = tmp_path / "reference.png"
    write_png(path, rgb)
    return path


def video_facts(path: Path) -> tuple[int, tuple[int, int, int], float]:
    """(frame count, frame shape, fps) of an mp4, read back with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return len(frames), frames[0].shape, float(stream.average_rate)


def test_output_size_defaults_to_the_reference_in_multiples_of_8():
    assert output_size((62, 46), None, None) == (64, 48)
    assert output_size((512, 768), None, None) == (512, 768)
    assert output_size((100, 200), 64, None) == (64, 128)
    assert output_size((100, 200), 60, 90) == (64, 88)


def test_generate_from_a_sequence_file(tmp_path, reference, pipelines):
    poses = tmp_path / "poses.json"
    write_sequence(sequence(3, fps=10.0), poses)
    events: list[dict] = []

    summary = generate("tiny", reference, poses, tmp_path / "out.mp4", steps=2, seed=1,
                       pipelines=pipelines, on_event=events.append)

    assert video_facts(tmp_path / "out.mp4") == (3, (48, 64, 3), 10.0)
    assert summary["frames"] == 3 and (summary["width"], summary["height"]) == (64, 48)
    assert summary["untrained"] is True
    stages = {e["stage"] for e in events if e["type"] == "progress"}
    assert {"loading", "denoising", "decoding", "done"} <= stages
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_generate_from_a_folder_of_frame_files(tmp_path, reference, pipelines):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, pose in enumerate(sequence(3)):
        write_frame(pose, folder / f"frame_{i:03d}.json")

    generate("tiny", reference, folder, tmp_path / "out.mp4", steps=2, fps=8.0, pipelines=pipelines)

    assert video_facts(tmp_path / "out.mp4") == (3, (48, 64, 3), 8.0)


def test_generate_from_a_folder_of_skeleton_images(tmp_path, reference, pipelines):
    folder = tmp_path / "skeletons"
    folder.mkdir()
    for i, pose in enumerate(sequence(2)):
        write_png(folder / f"{i:04d}.png", draw_pose(pose))

    assert load_driving_poses(folder).kind == "image_folder"
    generate("tiny", reference, folder, tmp_path / "out.mp4", steps=2, pipelines=pipelines)

    assert video_facts(tmp_path / "out.mp4") == (2, (48, 64, 3), 24.0)


def test_generate_from_a_skeleton_video_keeps_its_fps(tmp_path, reference, pipelines):
    skeletons = tmp_path / "skeletons.mp4"
    write_video(skeletons, (draw_pose(p) for p in sequence(3)), 15.0)

    driving = load_driving_poses(skeletons)
    assert driving.kind == "video" and len(driving) == 3 and driving.fps == pytest.approx(15.0)
    generate("tiny", reference, skeletons, tmp_path / "out.mp4", steps=2, width=32, height=24, pipelines=pipelines)

    count, shape, fps = video_facts(tmp_path / "out.mp4")
    assert (count, shape) == (3, (24, 32, 3)) and fps == pytest.approx(15.0)


def test_generate_refuses_poses_it_cannot_read(tmp_path, reference):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="do not know how to read poses"):
        load_driving_poses(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="neither OpenPose"):
        load_driving_poses(empty)
    with pytest.raises(InputError, match="do not exist"):
        load_driving_poses(tmp_path / "missing.json")
    with pytest.raises(InputError, match=".mp4"):
        generate("tiny", reference, tmp_path / "notes.txt", tmp_path / "out.gif")


def test_generate_command_line(tmp_path, reference):
    poses = tmp_path / "poses.json"
    write_sequence(sequence(2), poses)
    out = tmp_path / "out.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "animate_backend", "generate", "--model", "tiny", "--reference", str(reference),
         "--poses", str(poses), "--out", str(out), "--steps", "2", "--context-frames", "8",
         "--context-overlap", "2", "--context-schedule", "loop", "--device", "cpu"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert video_facts(out)[0] == 2
    assert str(out) in proc.stdout
    assert "UNTRAINED" in proc.stderr and "denoising" in proc.stderr  # the note and the progress bar


def test_generate_command_line_error_is_one_clear_line(tmp_path, reference):
    proc = subprocess.run(
        [sys.executable, "-m", "animate_backend", "generate", "--model", "tiny", "--reference", str(reference),
         "--poses", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out.mp4")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "error: poses" in proc.stderr and "do not exist" in proc.stderr
    assert not (tmp_path / "out.mp4").exists()


def run_generate(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "animate_backend", "generate", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("option, value, says", [
    ("--width", "0", "argument --width: must be a whole number at least 8"),
    ("--height", "-64", "argument --height: must be a whole number at least 8"),
    ("--width", "100000", "at most 4096"),
    ("--guidance", "nan", "argument --guidance: must be a number at least 0"),
    ("--guidance", "-1", "argument --guidance"),
    ("--fps", "-5", "argument --fps: must be a number above 0"),
    ("--fps", "inf", "argument --fps"),
    ("--steps", "0", "argument --steps"),
    ("--seed", "-1", "argument --seed"),
    ("--context-frames", "0", "argument --context-frames"),
    ("--context-overlap", "-2", "argument --context-overlap"),
])
def test_generate_options_out_of_range_are_named(tmp_path, reference, capsys, option, value, says):
    """Every numeric option is checked by the parser, before anything is read or loaded."""
    from animate_backend.__main__ import build_parser

    args = ["generate", "--model", "tiny", "--reference", str(reference), "--poses", "p.json",
            "--out", str(tmp_path / "out.mp4"), option, value]
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(args)
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


def test_generate_option_errors_name_the_option_on_the_command_line(tmp_path, reference):
    proc = run_generate("--model", "tiny", "--reference", str(reference), "--poses", "p.json",
                        "--out", str(tmp_path / "out.mp4"), "--fps", "-5")
    assert proc.returncode == 2 and "argument --fps: must be a number above 0" in proc.stderr
    assert "poses" not in proc.stderr.split("argument --fps")[1], "the poses file is not blamed"


def test_generate_function_checks_its_settings_by_name(tmp_path, reference):
    poses = tmp_path / "poses.json"
    write_sequence(sequence(2), poses)
    for kwargs, says in [
        ({"width": 0}, "--width must be a whole number from 8 to 4096, got 0"),
        ({"guidance_scale": float("nan")}, "--guidance must be a finite number"),
        ({"fps": -5.0}, "--fps must be a number above 0"),
        ({"context_frames": 4, "context_overlap": 4}, "--context-overlap must be between 0"),
    ]:
        with pytest.raises(InputError, match=says):
            generate("tiny", reference, poses, tmp_path / "out.mp4", **kwargs)


def test_generate_refuses_to_replace_a_video_without_force(tmp_path, reference, pipelines):
    poses = tmp_path / "poses.json"
    write_sequence(sequence(2), poses)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the user's video")
    with pytest.raises(InputError, match="already exists.*--force"):
        generate("tiny", reference, poses, out, steps=1, pipelines=pipelines)
    assert out.read_bytes() == b"the user's video"
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        generate("tiny", reference, poses, folder, steps=1, overwrite=True, pipelines=pipelines)

    generate("tiny", reference, poses, out, steps=1, overwrite=True, pipelines=pipelines)
    assert video_facts(out)[0] == 2


def test_generate_into_a_read_only_folder_fails_before_loading_the_model(tmp_path, reference, monkeypatch):
    import errno

    from pose_bridge import files

    poses = tmp_path / "poses.json"
    write_sequence(sequence(2), poses)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkstemp = files.tempfile.mkstemp

    def read_only_mkstemp(*args, dir=None, **kwargs):
        # What the OS says for a read-only folder (chmod 555 does not stop root, who runs CI here).
        if Path(dir) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only_mkstemp)

    class NoLoading(PipelineCache):
        def get(self, *args, **kwargs):
            raise AssertionError("the model must not be loaded when the output cannot be written")

    with pytest.raises(InputError, match="cannot write .*Permission denied.*choose another --out"):
        generate("tiny", reference, poses, locked / "out.mp4", pipelines=NoLoading())


def test_generate_where_the_output_cannot_be_written_fails_before_loading_the_model(tmp_path, reference):
    """The same for any reason the folder cannot take a file (here: its place is taken by a file)."""
    poses = tmp_path / "poses.json"
    write_sequence(sequence(2), poses)
    (tmp_path / "not_a_folder").write_text("a file")

    class NoLoading(PipelineCache):
        def get(self, *args, **kwargs):
            raise AssertionError("the model must not be loaded when the output cannot be written")

    with pytest.raises(InputError, match="cannot write"):
        generate("tiny", reference, poses, tmp_path / "not_a_folder" / "out.mp4", pipelines=NoLoading())


def test_a_huge_reference_is_one_line_naming_the_file_and_the_limit(tmp_path):
    """A 20000 x 20000 reference: refused from its header, before 1.2 GB of pixels are decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    poses = tmp_path / "poses.json"
    write_sequence(sequence(2), poses)
    proc = run_generate("--model", "tiny", "--reference", str(huge), "--poses", str(poses),
                        "--out", str(tmp_path / "out.mp4"))
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert str(huge) in errors[0] and "16384 pixels a side" in errors[0]
    assert not (tmp_path / "out.mp4").exists()
