"""The farm's shot lists, done-shot bookkeeping and terminal output: plain Python, no Ray, no Blender."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from animate_backend.__main__ import main as backend_main
from animate_backend.farm.progress import ProgressDisplay, frames_totals, status_line, summary_table
from animate_backend.farm.state import ShotState
from animate_backend.farm.shots import (
    FarmError, Shot, export_is_current, finished_result, make_shots, options_fingerprint, remember_export,
    remember_result,
)
from pose_bridge.job import JobPaths, JobSettings, write_settings


def test_a_shot_list_names_files_and_per_shot_options(tmp_path):
    (tmp_path / "list").mkdir()
    listing = tmp_path / "list" / "shots.txt"
    listing.write_text(
        "# episode 3\n"
        "sh010.blend\n"
        "\n"
        "shots/sh020.blend --frames 1-48 --seed 7   # the long one\n"
        "'other dir/sh010.blend' --model ../models/aa --image=ref.png --camera 'Cam B'\n"
    )

    shots = make_shots(tmp_path / "renders", [tmp_path / "sh005.blend"], listing)

    base = tmp_path / "list"
    assert [shot.blend for shot in shots] == [
        tmp_path / "sh005.blend", base / "sh010.blend", base / "shots" / "sh020.blend",
        base / "other dir" / "sh010.blend",
    ]
    # One job folder per shot, a name used twice gets _2 (as blender_addon.commands.batch names them).
    assert [shot.job_dir.name for shot in shots] == ["sh005", "sh010", "sh020", "sh010_2"]
    assert all(shot.job_dir.parent == tmp_path / "renders" for shot in shots)
    assert shots[2].options == ["--frames", "1-48", "--seed", "7"]
    # Paths in options are taken from the list's folder: the workers do not share our working folder.
    assert shots[3].options == ["--model", str(tmp_path / "models" / "aa"), f"--image={base / 'ref.png'}",
                                "--camera", "Cam B"]
    assert shots[1].origin == "shots.txt:2"


@pytest.mark.parametrize("line, message", [
    ("sh010.blend --out /elsewhere", "shots.txt:1: --out is set by the farm"),
    ("sh010.blend --import=plane", "shots.txt:1: --import is set by the farm"),
    ("--frames 1-4", "a line starts with the shot's .blend file"),
    ("'sh010.blend", "check its quotes"),
])
def test_a_bad_shot_list_says_which_line(tmp_path, line, message):
    listing = tmp_path / "shots.txt"
    listing.write_text(line + "\n")
    with pytest.raises(FarmError, match=message):
        make_shots(tmp_path / "out", [], listing)


def test_bad_farm_command_lines_exit_2_with_one_line(tmp_path, capsys):
    assert backend_main(["farm", "--out", str(tmp_path)]) == 2
    assert "no shots given" in capsys.readouterr().err
    assert backend_main(["farm", "a.blend", "--out", str(tmp_path)]) == 2
    assert "no model for a: pass --model DIR" in capsys.readouterr().err
    assert backend_main(["farm", "a.blend", "--out", str(tmp_path), "--model", "tiny", "--shot-options", "--save"]) == 2
    assert "--shot-options: --save is set by the farm" in capsys.readouterr().err


def test_the_export_command_runs_the_add_ons_cli():
    export_command = pytest.importorskip("animate_backend.farm.workers", reason="needs ray").export_command
    args = ["--out", "/jobs/sh010", "--export-only", "--model", "tiny"]
    command = export_command("/shots/sh010.blend", args, python="/venv/bin/python")
    assert command == ["/venv/bin/python", "-m", "blender_addon.cli", "/shots/sh010.blend", "--", *args]

    command = export_command("/shots/sh010.blend", args, blender="/opt/blender/blender", addon_cli="/addon/cli.py")
    assert command == ["/opt/blender/blender", "-b", "/shots/sh010.blend", "--python-exit-code", "1",
                       "-P", "/addon/cli.py", "--", *args]
    # By default, the cli.py of the add-on installed beside the backend.
    default = export_command("/s.blend", args, blender="blender")
    assert Path(default[6]).name == "cli.py" and Path(default[6]).parent.name == "blender_addon"


def _exported_job(job_dir: Path, frames: int = 3) -> None:
    """What an export leaves: job.json, reference.png, poses.json (contents do not matter here)."""
    write_settings(job_dir, JobSettings(frame_start=1, frame_end=frames, width=64, height=64))
    paths = JobPaths(job_dir)
    paths.reference.write_bytes(b"png")
    paths.poses.write_text("{}")


def _generated(job_dir: Path, frames: int = 3) -> dict:
    paths = JobPaths(job_dir)
    paths.frames.mkdir(parents=True)
    for i in range(frames):
        paths.frame(i).write_bytes(b"png")
    paths.video.write_bytes(b"mp4")
    result = {"frames": frames, "video": "out/video.mp4", "fingerprint": "f1", "untrained": True}
    paths.result.write_text(json.dumps(result))
    return result


def test_a_shot_is_done_only_when_generated_from_its_current_export(tmp_path):
    job = tmp_path / "sh010"
    shot = Shot(tmp_path / "sh010.blend", job, ["--seed", "3"])
    fingerprint = options_fingerprint("tiny", ["--steps", "2"], shot)
    assert fingerprint != options_fingerprint("tiny", ["--steps", "3"], shot)
    assert fingerprint != options_fingerprint("/models/aa", ["--steps", "2"], shot)

    _exported_job(job)
    assert not export_is_current(job, "blend-a", fingerprint)  # no farm record yet
    assert remember_export(job, "blend-a", fingerprint) == 3
    assert export_is_current(job, "blend-a", fingerprint)
    assert not export_is_current(job, "blend-b", fingerprint)  # the .blend changed
    assert not export_is_current(job, "blend-a", "other-options")

    result = _generated(job)
    assert finished_result(job, "blend-a", fingerprint) is None  # frames from before this export
    remember_result(job, result)
    assert finished_result(job, "blend-a", fingerprint) == result
    JobPaths(job).frame(1).unlink()
    assert finished_result(job, "blend-a", fingerprint) is None  # a frame is missing: generate again

    # A new export forgets the result made from the previous one.
    remember_export(job, "blend-a", fingerprint)
    JobPaths(job).frame(1).write_bytes(b"png")
    assert finished_result(job, "blend-a", fingerprint) is None


def _state(name: str, status: str, total: int | None, done: int = 0, **extra) -> ShotState:
    state = ShotState(Shot(Path(f"/s/{name}.blend"), Path(f"/out/{name}")), status=status, frames_total=total,
                      frames_done=done)
    for key, value in extra.items():
        setattr(state, key, value)
    return state


def test_progress_counts_shots_frames_and_time_left():
    states = [
        _state("sh010", "done", 24, 24, attempts=1, seconds=12.5, detail="/out/sh010/out/video.mp4"),
        _state("sh020", "generating", 48, 12, attempts=2),
        _state("sh030", "exporting", None),  # counted as the mean of the known shots until exported
        _state("sh040", "failed", None, detail="export: scene 'Demo' has no active camera"),
    ]
    assert frames_totals(states) == (36, 24 + 48 + 36, False)
    assert status_line(states, 95.0) == (
        "shots 2/4 (1 failed) | generating 1, exporting 1 | frames 36/108+ | ETA 0:01:35"
    )

    table = summary_table(states).splitlines()
    assert table[0].split() == ["shot", "status", "tries", "frames", "seconds", "result"]
    assert table[1].split() == ["sh010", "done", "1", "24/24", "12.5", "/out/sh010/out/video.mp4"]
    assert table[4].split()[:3] == ["sh040", "FAILED", "-"] and table[4].endswith("has no active camera")
    assert table[-1] == "4 shot(s): 1 done, 0 skipped, 1 failed"

    stream = io.StringIO()  # not a terminal: a line when something changes, not for every ETA tick
    display = ProgressDisplay(stream)
    display.update(states)
    display.update(states)
    display.message("sh020: done")
    assert stream.getvalue().splitlines() == [status_line(states, None), "sh020: done"]


def test_missing_and_done_shots_are_sorted_out_before_any_cluster_starts(tmp_path):
    from animate_backend.farm.runner import Farm, FarmOptions
    from pose_bridge.files import file_sha256

    blend = tmp_path / "sh010.blend"
    blend.write_bytes(b"BLENDER-v500 a shot")
    shots = make_shots(tmp_path / "renders", [blend, tmp_path / "gone.blend"])
    options = FarmOptions(out=tmp_path / "renders", model="tiny", shot_options=["--steps", "2"])
    # sh010 was exported and generated by an earlier run with the same file and options.
    job = shots[0].job_dir
    _exported_job(job)
    remember_export(job, file_sha256(blend), options_fingerprint("tiny", ["--steps", "2"], shots[0]))
    remember_result(job, _generated(job))

    farm = Farm(shots, options)
    assert farm.prepare() is False  # nothing left to run: run_farm returns without starting Ray

    done, missing = farm.states
    assert (done.status, done.frames_done) == ("skipped", 3)
    assert done.detail == f"done before with the same file and options: {job / 'out' / 'video.mp4'} (UNTRAINED model)"
    assert missing.status == "failed"
    assert missing.detail == f"{tmp_path / 'gone.blend'} does not exist; check the shot list (command line)"

    # Other options make the same file a new shot.
    other = Farm(make_shots(tmp_path / "renders", [blend]), FarmOptions(out=options.out, model="tiny"))
    assert other.prepare() is True and other.states[0].status == "pending"


def test_the_farm_command_prints_a_table_and_exits_1_when_a_shot_failed(tmp_path, capsys):
    pytest.importorskip("ray")
    blend = tmp_path / "sh010.blend"
    blend.write_bytes(b"BLENDER-v500 a shot")
    job = tmp_path / "renders" / "sh010"
    _exported_job(job)
    shot = make_shots(tmp_path / "renders", [blend])[0]
    from pose_bridge.files import file_sha256

    remember_export(job, file_sha256(blend), options_fingerprint("tiny", [], shot))
    remember_result(job, _generated(job))

    # Every shot is done or missing: nothing to run, so no Ray cluster is started at all.
    code = backend_main(["farm", str(blend), str(tmp_path / "gone.blend"), "--out", str(tmp_path / "renders"),
                         "--model", "tiny"])

    out, err = capsys.readouterr()
    assert code == 1
    assert "gone: FAILED: " in err and "does not exist; check the shot list" in err
    table = out.splitlines()
    assert table[1].split()[:2] == ["sh010", "skipped"] and table[2].split()[:2] == ["gone", "FAILED"]
    assert table[-1] == "2 shot(s): 0 done, 1 skipped, 1 failed"
