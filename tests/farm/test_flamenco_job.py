"""The Flamenco job type (farm/flamenco/animate_anyone.js), compiled with Node.js against a
stand-in of Flamenco Manager's job-author API (flamenco_author.js beside this file).

The commands it writes are parsed back with our own command lines (blender_addon.cli's and
animate_backend's parsers), so the job type and the tools it calls cannot drift apart.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from animate_backend.__main__ import build_parser as backend_parser
from blender_addon.commands.cli import build_parser as addon_cli_parser

REPO = Path(__file__).resolve().parents[2]
JOB_TYPE = REPO / "farm" / "flamenco" / "animate_anyone.js"
STAND_IN = Path(__file__).with_name("flamenco_author.js")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js (node) to run the Flamenco job compiler")

SETTINGS = {
    # What the Flamenco add-on submits for sh010.blend, plus a second shot.
    "blendfile": "/farm/shots/sh010.blend",
    "extra_shots": " /farm/shots/sh020.blend ; ",
    "frames": "1-48",
    "model": "/farm/models/animate_anyone",
    "addon_cli": "/farm/addon/animate_anyone/cli.py",
    "backend_python": "/farm/venv/bin/python",
    "size": "512x768",
    "extra_args": "--camera 'Cam B' --retarget chain",
}


def compile_job(tmp_path: Path, settings: dict) -> subprocess.CompletedProcess:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings))
    return subprocess.run([NODE, str(STAND_IN), str(JOB_TYPE), str(settings_file)],
                          capture_output=True, text=True, timeout=60)


def tasks_of(tmp_path: Path, settings: dict) -> dict[str, dict]:
    process = compile_job(tmp_path, settings)
    assert process.returncode == 0, process.stderr
    compiled = json.loads(process.stdout)
    assert compiled["label"] == "Animate Anyone"
    return {task["name"]: task for task in compiled["tasks"]}


def cli_args(command: dict) -> list[str]:
    """The add-on cli's own arguments of a blender-render command (those after --)."""
    args = command["parameters"]["args"]
    assert args[:5] == ["--python-exit-code", "1", "-P", SETTINGS["addon_cli"], "--"]
    return args[5:]


def test_a_two_shot_job_compiles_to_export_generate_import_per_shot(tmp_path):
    tasks = tasks_of(tmp_path, SETTINGS)

    assert list(tasks) == ["export-sh010", "generate-sh010", "import-sh010",
                           "export-sh020", "generate-sh020", "import-sh020"]
    for shot in ("sh010", "sh020"):
        export, generate, imported = tasks[f"export-{shot}"], tasks[f"generate-{shot}"], tasks[f"import-{shot}"]
        # Blender anywhere, generation only on workers that take "gpu" tasks.
        assert (export["type"], generate["type"], imported["type"]) == ("blender", "gpu", "blender")
        # Each step waits for the one before it; shots do not wait for each other.
        assert export["dependencies"] == []
        assert generate["dependencies"] == [f"export-{shot}"]
        assert imported["dependencies"] == [f"generate-{shot}"]
        assert all(len(task["commands"]) == 1 for task in (export, generate, imported))

        job_dir = f"/farm/shots/animate_jobs/{shot}"
        command = export["commands"][0]
        assert command["name"] == "blender-render"
        assert command["parameters"]["exe"] == "{blender}" and command["parameters"]["exeArgs"] == "{blenderArgs}"
        assert command["parameters"]["blendfile"] == f"/farm/shots/{shot}.blend"
        args = addon_cli_parser().parse_args(cli_args(command))
        assert (args.out, args.export_only, args.model) == (job_dir, True, "/farm/models/animate_anyone")
        assert (args.frames, args.size, args.steps, args.guidance_scale, args.seed) == ((1, 48), (512, 768), 20, 3.5, 0)
        assert (args.camera, args.retarget) == ("Cam B", "chain")

        command = generate["commands"][0]
        assert command["name"] == "exec" and command["parameters"]["exe"] == "/farm/venv/bin/python"
        run_args = command["parameters"]["args"]
        assert run_args[:2] == ["-m", "animate_backend"]
        parsed = backend_parser().parse_args(run_args[2:])
        assert (parsed.command, parsed.job_dir) == ("run", job_dir)

        command = imported["commands"][0]
        assert command["name"] == "blender-render" and command["parameters"]["blendfile"] == f"/farm/shots/{shot}.blend"
        args = addon_cli_parser().parse_args(cli_args(command))
        assert (args.out, args.import_only, args.import_mode) == (job_dir, True, "plane")
        assert args.save_as == f"/farm/shots/{shot}_animate.blend" and not args.save  # the shot itself is kept


def test_job_folders_go_to_job_root_and_a_name_used_twice_gets_a_suffix(tmp_path):
    settings = dict(SETTINGS, job_root="/farm/jobs/ep03", extra_shots="/farm/other/sh010.blend",
                    import_as="strip", steps=4, seed=7)
    tasks = tasks_of(tmp_path, settings)

    assert list(tasks) == ["export-sh010", "generate-sh010", "import-sh010",
                           "export-sh010_2", "generate-sh010_2", "import-sh010_2"]
    assert tasks["generate-sh010_2"]["commands"][0]["parameters"]["args"][-1] == "/farm/jobs/ep03/sh010_2"
    args = addon_cli_parser().parse_args(cli_args(tasks["export-sh010_2"]["commands"][0]))
    assert (args.out, args.steps, args.seed) == ("/farm/jobs/ep03/sh010_2", 4, 7)
    args = addon_cli_parser().parse_args(cli_args(tasks["import-sh010_2"]["commands"][0]))
    assert (args.import_mode, args.save_as) == ("strip", "/farm/other/sh010_2_animate.blend")


def test_a_bad_job_fails_to_compile_with_a_reason(tmp_path):
    process = compile_job(tmp_path, dict(SETTINGS, extra_shots="/farm/shots/sh020.mp4"))
    assert process.returncode == 1
    assert '"/farm/shots/sh020.mp4" is not a .blend file' in process.stderr

    missing = {key: value for key, value in SETTINGS.items() if key != "model"}
    process = compile_job(tmp_path, missing)
    assert process.returncode == 1 and 'required setting "model" is missing' in process.stderr
