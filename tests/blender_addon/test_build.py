"""build_addon.py: the extension zip Blender installs, and installing it.

Blender's own extension tools come with the bpy module: its command line validates the zip
(`blender --command extension validate`), and its installer (Preferences > Get Extensions >
Install from Disk) installs it, wheel included, into an extensions folder of the test's own,
in a fresh Python that sees neither this checkout nor its editable install.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import site
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import build_addon  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_addon.build(tmp_path_factory.mktemp("dist"))


def test_zip_has_the_manifest_at_its_root_and_the_wheel_it_lists(built):
    assert built.name == "animate_anyone-0.1.0.zip"
    with zipfile.ZipFile(built) as archive:
        names = set(archive.namelist())
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["id"] == "animate_anyone" and manifest["blender_version_min"] == "4.2.0"
    assert set(manifest["permissions"]) == {"files", "network"}
    for reason in manifest["permissions"].values():
        assert len(reason) <= 64 and reason[-1].isalnum()  # Blender's rule for these texts
    assert manifest["wheels"] == ["./wheels/pose_bridge-0.1.0-py3-none-any.whl"]
    assert "wheels/pose_bridge-0.1.0-py3-none-any.whl" in names
    assert {"__init__.py", "cli.py", "ui/operators.py", "ui/panel.py", "ui/properties.py", "ui/preferences.py",
            "results/importing.py", "connection/client.py", "connection/generation.py", "export/projection.py",
            "commands/cli.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert [n for n in names if n.startswith("backend/") and n.endswith("-py3-none-any.whl")]


def _wheel(built, prefix):
    with zipfile.ZipFile(built) as archive:
        name = next(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".whl"))
        return zipfile.ZipFile(io.BytesIO(archive.read(name)))


def test_wheels_follow_the_wheel_format(built):
    for prefix, dist, packages in (
        ("wheels/pose_bridge", "pose_bridge-0.1.0", {"pose_bridge"}),
        ("backend/animate_anyone_blender", "animate_anyone_blender-0.1.0", {"pose_bridge", "animate_backend"}),
    ):
        wheel = _wheel(built, prefix)
        info = f"{dist}.dist-info"
        assert "Tag: py3-none-any" in wheel.read(f"{info}/WHEEL").decode()
        assert "Root-Is-Purelib: true" in wheel.read(f"{info}/WHEEL").decode()
        top = {n.split("/")[0] for n in wheel.namelist() if not n.startswith(info)}
        assert top == packages
        # Every file is in RECORD with its sha256 and size (PEP 376 / 427).
        rows = list(csv.reader(io.StringIO(wheel.read(f"{info}/RECORD").decode())))
        recorded = {row[0]: row for row in rows}
        assert set(recorded) == set(wheel.namelist())
        for name, (_, digest, size) in recorded.items():
            if name.endswith("RECORD"):
                assert digest == "" and size == ""
                continue
            data = wheel.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}" and int(size) == len(data)
    metadata = _wheel(built, "backend/").read("animate_anyone_blender-0.1.0.dist-info/METADATA").decode()
    assert 'Requires-Dist: torch==2.13.0; extra == "backend"' in metadata
    assert "Requires-Dist: numpy>=1.26,<2" in metadata


def test_build_is_reproducible(built, tmp_path):
    again = build_addon.build(tmp_path)
    assert again.read_bytes() == built.read_bytes()


def test_manifest_and_wheel_versions_must_agree(monkeypatch, tmp_path):
    real = build_addon.read_manifest()
    monkeypatch.setattr(build_addon, "read_manifest", lambda: {**real, "wheels": ["./wheels/other-1.0-py3-none-any.whl"]})
    with pytest.raises(build_addon.BuildError, match="must list ./wheels/pose_bridge-0.1.0-py3-none-any.whl"):
        build_addon.build(tmp_path)


def _blender_ext_cli() -> Path:
    """Blender's own extension command line (what `blender --command extension ...` runs), shipped with bpy."""
    import bpy

    scripts = Path(bpy.utils.resource_path("LOCAL")) / "scripts"
    return scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"


def test_blender_validates_the_zip(built):
    result = subprocess.run(
        [sys.executable, str(_blender_ext_cli()), "validate", str(built)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_blender_installs_and_enables_the_zip(built, tmp_path):
    """Install from Disk with Blender's own installer, into an extensions folder of the test's own."""
    extensions = tmp_path / "extensions"
    # -S: no site processing, so neither this checkout nor its editable install is seen; only the
    # environment's plain site-packages (bpy, numpy) and what Blender installs for the extension.
    script = textwrap.dedent(f"""
        import sys
        sys.path += {site.getsitepackages()!r}
        import bpy
        import addon_utils
        name = "bl_ext.user_default.animate_anyone"
        result = bpy.ops.extensions.package_install_files(
            filepath={str(built)!r}, repo="user_default", enable_on_install=True
        )
        assert result == {{"FINISHED"}}, result
        import pose_bridge
        assert pose_bridge.__file__.startswith({str(extensions / ".local")!r}), pose_bridge.__file__
        assert "blender_addon" not in sys.modules
        for _ in range(2):
            prefs = bpy.context.preferences.addons[name].preferences
            assert prefs.bl_rna.identifier == "ANIMATE_AP_preferences"
            assert bpy.context.scene.animate_anyone.import_mode == "PLANE"
            addon_utils.disable(name, default_set=True)
            assert not hasattr(bpy.types.Scene, "animate_anyone")
            assert addon_utils.enable(name, default_set=True) is not None
        assert "torch" not in sys.modules
        print("installed add-on ok")
    """)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["BLENDER_USER_EXTENSIONS"] = str(extensions)
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "installed add-on ok" in result.stdout
    installed = extensions / "user_default" / "animate_anyone"
    assert (installed / "blender_manifest.toml").is_file() and (installed / "ui" / "operators.py").is_file()


def test_a_manifest_blender_rejects_fails_the_build(built, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(built) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "blender_manifest.toml":
                text = data.decode()
                start = text.index('network = "')
                end = text.index("\n", start)
                data = (text[:start] + 'network = "Downloads packages."' + text[end:]).encode()
            target.writestr(item, data)
    with pytest.raises(build_addon.BuildError, match="must not end with punctuation"):
        build_addon.verify(bad)
