"""Job folders: write_job / read_job, and clear errors for every missing or broken part."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pose_samples import standing_pose

from pose_bridge.errors import JobError
from pose_bridge.image_io import read_image
from pose_bridge.job import JobSettings, read_job, write_job
from pose_bridge.keypoints import PoseSequence


def settings(frames: int = 3) -> JobSettings:
    return JobSettings(model="tiny", width=64, height=96, fps=12.0, frame_start=1, frame_end=frames)


def reference_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)


def poses(n: int = 3) -> PoseSequence:
    return PoseSequence([standing_pose().resized(128, 128) for _ in range(n)], fps=12.0)


def test_write_then_read_gives_everything_back(tmp_path):
    paths = write_job(tmp_path / "job", settings(), reference_image(), poses())
    assert paths.settings.is_file() and paths.reference.is_file() and paths.poses.is_file()
    assert sorted(p.name for p in paths.skeletons.iterdir()) == ["0001.png", "0002.png", "0003.png"]
    skeleton = read_image(paths.skeletons / "0001.png")
    assert skeleton.shape == (128, 128, 3) and skeleton.any()

    job = read_job(tmp_path / "job")
    assert job.settings == settings()
    np.testing.assert_array_equal(job.reference, reference_image())
    assert len(job.poses) == 3 and job.poses.fps == 12.0
    np.testing.assert_array_equal(job.poses[1].body, poses()[1].body)
    assert job.paths.root == tmp_path / "job"
    # No temporary files are left behind.
    assert not [p for p in paths.root.rglob(".*")]


def test_rewriting_with_fewer_frames_removes_old_skeletons(tmp_path):
    write_job(tmp_path, settings(3), reference_image(), poses(3))
    write_job(tmp_path, settings(2), reference_image(), poses(2), draw_skeletons=True)
    assert sorted(p.name for p in (tmp_path / "poses").iterdir()) == ["0001.png", "0002.png"]


def test_a_refused_job_writes_nothing(tmp_path):
    with pytest.raises(JobError, match="3 frames .* 2 poses"):
        write_job(tmp_path / "job", settings(3), reference_image(), poses(2))
    with pytest.raises(JobError, match="multiples of 8"):
        write_job(tmp_path / "job", JobSettings(width=65, frame_end=2), reference_image(), poses(2))
    with pytest.raises(JobError, match="RGB uint8"):
        write_job(tmp_path / "job", settings(2), reference_image().astype(np.float32), poses(2))
    assert not (tmp_path / "job").exists() or not any((tmp_path / "job").iterdir())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "job.json").unlink(), "job.json is missing"),
        (lambda p: (p / "job.json").write_text("{broken"), "not valid JSON"),
        (lambda p: (p / "reference.png").unlink(), "reference.png is missing"),
        (lambda p: (p / "reference.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"), "reference.png cannot be read"),
        (lambda p: (p / "poses.json").unlink(), "poses.json is missing"),
        (lambda p: (p / "poses.json").write_text("[]"), "poses.json is invalid"),
    ],
)
def test_damaged_jobs_say_which_file_and_what_to_do(tmp_path, damage, message):
    write_job(tmp_path, settings(), reference_image(), poses())
    damage(tmp_path)
    with pytest.raises(JobError, match=message) as info:
        read_job(tmp_path)
    assert "export the job" in str(info.value)


def test_frame_count_must_match_the_settings(tmp_path):
    write_job(tmp_path, settings(3), reference_image(), poses(3))
    data = json.loads((tmp_path / "job.json").read_text())
    data["frame_end"] = 5
    (tmp_path / "job.json").write_text(json.dumps(data))
    with pytest.raises(JobError, match="3 frames but job.json asks for 5"):
        read_job(tmp_path)


def test_a_failed_re_export_does_not_leave_the_old_settings(tmp_path, monkeypatch):
    write_job(tmp_path, settings(3), reference_image(), poses(3))
    import pose_bridge.openpose_json as openpose_json

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(openpose_json, "write_sequence", broken)
    with pytest.raises(OSError):
        write_job(tmp_path, settings(2), reference_image(), poses(2))
    with pytest.raises(JobError, match="job.json is missing"):
        read_job(tmp_path)


@pytest.mark.parametrize("change, says", [
    ({"model": 123}, "model must be text"),
    ({"output_kinds": "video"}, "output_kinds must be a list"),
    ({"draw_hands": "no"}, "draw_hands must be true or false"),  # "no" is truthy: it would draw hands
    ({"provenance": []}, "provenance must be an object"),
    ({"steps": 2.7}, "steps must be a whole number"),  # not silently 2
    ({"context_frames": "8"}, "context_frames must be a whole number"),
    ({"format_version": "1"}, "format_version must be a whole number"),
    ({"seed": 1e30}, "seed must be a whole number from 0"),
    ({"width": 8192, "height": 8192}, "width must be a whole number from 8 to 4096, got 8192"),
    ({"steps": 5000}, "steps must be a whole number from 1 to 1000, got 5000"),
])
def test_settings_of_the_wrong_type_or_beyond_limits_are_named(tmp_path, change, says):
    """A hand-edited or foreign job.json: every wrong setting is named, none crashes the reader."""
    from pose_bridge.job import read_settings

    write_job(tmp_path / "job", JobSettings(width=64, height=64, frame_end=1), np.zeros((8, 8, 3), np.uint8),
              PoseSequence([standing_pose()], 24.0))
    data = json.loads((tmp_path / "job" / "job.json").read_text())
    data.update(change)
    (tmp_path / "job" / "job.json").write_text(json.dumps(data))
    with pytest.raises(JobError, match=says):
        read_settings(tmp_path / "job")
