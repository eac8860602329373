"""Set up backend: a virtual environment made and filled by pip in a subprocess, log streamed, cancellable.

No network here: the install uses the backend wheel that build_addon.py makes, with
--no-index --no-deps (the real setup also installs torch and the rest from the index).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bpy
import pytest

import ui_scene
from blender_addon.ui import preferences

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import build_addon  # noqa: E402


@pytest.fixture
def prefs():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return ui_scene.enable_addon()


def test_setup_needs_online_access(prefs, tmp_path):
    assert not bpy.app.online_access  # the bpy module runs with online access off
    prefs.venv_dir = str(tmp_path / "venv")
    with pytest.raises(RuntimeError, match="enable 'Allow Online Access' in Preferences > System"):
        bpy.ops.animate_anyone.setup_backend()
    assert not (tmp_path / "venv").exists()


def test_setup_refuses_an_empty_install_line(tmp_path):
    setup = preferences.BackendSetup()
    with pytest.raises(ValueError, match="nothing to install"):
        setup.start(tmp_path / "venv", "   ")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A backend environment set up once for the module (a venv costs seconds)."""
    tmp_path = tmp_path_factory.mktemp("setup")
    wheel = build_addon.write_wheel(
        tmp_path, "animate-anyone-blender", "0.1.0", [ROOT / "animate_backend", ROOT / "pose_bridge"],
        summary="test build",
    )
    setup = preferences.BackendSetup()
    venv = tmp_path / "backend venv"  # a space in the path, as in many user folders
    setup.start(venv, f'--no-index --no-deps "{wheel}"')
    assert setup.running
    setup.wait(timeout=300)
    return setup, venv


def test_setup_creates_the_environment_and_installs_the_backend(installed, tmp_path):
    setup, venv = installed
    assert setup.state == "done", "\n".join(setup.lines[-20:])
    python = preferences.venv_python(venv)
    assert python.is_file()
    assert any(line.startswith("== Creating the environment") for line in setup.lines)
    assert any("Successfully installed animate-anyone-blender-0.1.0" in line for line in setup.lines)
    assert "backend ok" in setup.lines
    assert setup.message == f"Backend ready in {venv}"
    text = bpy.data.texts[preferences.LOG_TEXT_NAME].as_string()
    assert "Successfully installed" in text  # the whole log is also in a text block
    check = subprocess.run(
        [str(python), "-c", "import animate_backend, pose_bridge; print(animate_backend.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert str(venv) in check.stdout  # installed into the new environment, not linked to this checkout


def test_failed_install_says_so(installed, tmp_path):
    _, venv = installed
    setup = preferences.BackendSetup()
    setup.start(venv, f"--no-index --no-deps {tmp_path / 'missing.whl'}")
    assert setup.wait(timeout=300) == "failed"
    assert not any(line.startswith("== Creating the environment") for line in setup.lines)  # reused
    assert "failed (exit code" in setup.message and "the log above says why" in setup.message
    assert any("missing.whl" in line for line in setup.lines)


def test_cancel_stops_the_running_step(tmp_path):
    setup = preferences.BackendSetup()
    setup.start(tmp_path / "venv", "--no-index --no-deps something")
    process = setup._process
    setup.cancel()
    assert setup.state == "cancelled" and "cancelled" in setup.message
    assert process.poll() is not None
    assert setup.poll() == "cancelled"
