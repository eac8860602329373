"""Build the Blender extension: `python build_addon.py` writes dist/animate_anyone-<version>.zip.

The zip is what `blender --command extension build` would make and what
`blender --command extension install-file` (or Preferences > Get Extensions > Install
from Disk) accepts:

    blender_manifest.toml                        at the zip's root
    __init__.py, operators.py, ...               the add-on (blender_addon/ without caches)
    wheels/pose_bridge-<v>-py3-none-any.whl      listed in the manifest's `wheels`
    backend/animate_anyone_blender-<v>-py3-none-any.whl
                                                 the backend (animate_backend + pose_bridge)
                                                 that "Set up backend" pip-installs into its
                                                 own environment, with its requirements

Both wheels are pure Python and written here following the wheel format (PEP 427/491):
no build backend, no network, byte-for-byte reproducible (fixed timestamps).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON_DIR = ROOT / "blender_addon"
MANIFEST = "blender_manifest.toml"
# Zip entries get this time: the same sources give the same bytes.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
# Extras of pyproject.toml that a backend install can ask for ("all" and "test" are for developers).
BACKEND_EXTRAS = ("detect", "backend", "train")


class BuildError(Exception):
    """The sources are not in a state that makes a valid extension."""


def package_files(package_dir: Path) -> list[Path]:
    """Every file of a package, sorted, without caches and compiled files."""
    files = []
    for path in sorted(package_dir.rglob("*")):
        if not path.is_file() or SKIP_DIRS.intersection(path.relative_to(package_dir).parts):
            continue
        if path.suffix in SKIP_SUFFIXES or path.name == ".DS_Store":
            continue
        files.append(path)
    return files


def _zip_write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def write_wheel(
    out_dir: Path,
    name: str,
    version: str,
    packages: list[Path],
    *,
    summary: str,
    requires: list[str] = (),
    extras: dict[str, list[str]] | None = None,
) -> Path:
    """A py3-none-any wheel holding `packages` (folders), with its METADATA, WHEEL and RECORD."""
    dist = name.replace("-", "_")
    wheel_path = out_dir / f"{dist}-{version}-py3-none-any.whl"
    dist_info = f"{dist}-{version}.dist-info"
    entries: list[tuple[str, bytes]] = []
    for package in packages:
        for path in package_files(package):
            entries.append((path.relative_to(package.parent).as_posix(), path.read_bytes()))

    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {summary}",
        "Requires-Python: >=3.11",
        *[f"Requires-Dist: {requirement}" for requirement in requires],
    ]
    for extra, requirements in (extras or {}).items():
        metadata.append(f"Provides-Extra: {extra}")
        metadata += [f'Requires-Dist: {requirement}; extra == "{extra}"' for requirement in requirements]
    wheel = ["Wheel-Version: 1.0", "Generator: build_addon.py", "Root-Is-Purelib: true", "Tag: py3-none-any"]
    entries.append((f"{dist_info}/METADATA", ("\n".join(metadata) + "\n").encode()))
    entries.append((f"{dist_info}/WHEEL", ("\n".join(wheel) + "\n").encode()))
    entries.append((f"{dist_info}/top_level.txt", ("\n".join(p.name for p in packages) + "\n").encode()))
    record = [f"{entry},{_record_hash(data)},{len(data)}" for entry, data in entries]
    record.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))

    with zipfile.ZipFile(wheel_path, "w") as archive:
        for entry, data in entries:
            _zip_write(archive, entry, data)
    return wheel_path


def read_manifest() -> dict:
    try:
        return tomllib.loads((ADDON_DIR / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{ADDON_DIR / MANIFEST} cannot be read: {exc}") from exc


def read_project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def build(out_dir: Path = ROOT / "dist") -> Path:
    """Write the extension zip into out_dir and return its path."""
    manifest = read_manifest()
    project = read_project()
    addon_id, version = manifest["id"], manifest["version"]
    if version != project["version"]:
        raise BuildError(
            f"{MANIFEST} says version {version} but pyproject.toml says {project['version']}: make them equal"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="animate-build-") as tmp:
        tmp_dir = Path(tmp)
        pose_wheel = write_wheel(
            tmp_dir, "pose_bridge", version, [ROOT / "pose_bridge"],
            # numpy comes with Blender; Pillow and onnxruntime are imported only by functions
            # the add-on does not call inside Blender.
            summary="Poses as data: OpenPose keypoints, skeleton drawing, bone presets",
        )
        wanted = {Path(w).name for w in manifest.get("wheels", [])}
        if pose_wheel.name not in wanted:
            raise BuildError(
                f"{MANIFEST} must list ./wheels/{pose_wheel.name} in `wheels` (it lists {sorted(wanted)})"
            )
        optional = project.get("optional-dependencies", {})
        backend_wheel = write_wheel(
            tmp_dir, project["name"], version, [ROOT / "animate_backend", ROOT / "pose_bridge"],
            summary=project.get("description", ""),
            requires=list(project.get("dependencies", [])),
            extras={extra: list(optional.get(extra, [])) for extra in BACKEND_EXTRAS},
        )

        zip_path = out_dir / f"{addon_id}-{version}.zip"
        fd, tmp_zip = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp_zip, "w") as archive:
                _zip_write(archive, MANIFEST, (ADDON_DIR / MANIFEST).read_bytes())
                for path in package_files(ADDON_DIR):
                    if path.name != MANIFEST:
                        _zip_write(archive, path.relative_to(ADDON_DIR).as_posix(), path.read_bytes())
                _zip_write(archive, f"wheels/{pose_wheel.name}", pose_wheel.read_bytes())
                _zip_write(archive, f"backend/{backend_wheel.name}", backend_wheel.read_bytes())
            os.replace(tmp_zip, zip_path)
        except BaseException:
            Path(tmp_zip).unlink(missing_ok=True)
            raise
    verify(zip_path)
    return zip_path


def verify(zip_path: Path) -> list[str]:
    """Check the zip as Blender would see it; returns its file list."""
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        if MANIFEST not in names:
            raise BuildError(f"{zip_path}: {MANIFEST} is not at the zip's root")
        manifest = tomllib.loads(archive.read(MANIFEST).decode("utf-8"))
        for wheel in manifest.get("wheels", []):
            entry = wheel.removeprefix("./")
            if entry not in names:
                raise BuildError(f"{zip_path}: the manifest lists {wheel} but the zip has no {entry}")
            with zipfile.ZipFile(archive.open(entry)) as inner:
                if inner.testzip() is not None:
                    raise BuildError(f"{zip_path}: {entry} is damaged")
        if "__init__.py" not in names:
            raise BuildError(f"{zip_path}: the add-on's __init__.py is not at the zip's root")
        bad = archive.testzip()
        if bad is not None:
            raise BuildError(f"{zip_path}: {bad} is damaged")
    blender_validate(zip_path)
    return names


def blender_validate(zip_path: Path) -> bool:
    """Run Blender's own manifest validator on the zip when the bpy module is installed here.

    Returns False when it is not (then only the checks above ran); raises BuildError on failure.
    """
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return False
    bpy_dir = Path(next(iter(spec.submodule_search_locations)))
    clis = sorted(bpy_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not clis:
        return False
    result = subprocess.run(
        [sys.executable, str(clis[-1]), "validate", str(zip_path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise BuildError(f"Blender's validator rejects {zip_path}:\n{result.stdout}{result.stderr}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    try:
        zip_path = build(args.out)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            print(f"{info.file_size:>10}  {info.filename}")
    print(f"wrote {zip_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
