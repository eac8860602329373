"""Shot lists: which .blend files to run, with which options, into which job folders.

A shot list is the .blend files given on the command line and/or a text file, one shot a line:

    # renders for episode 3; paths are relative to this file
    sh010.blend
    sh020.blend --frames 1-48 --seed 7
    "sh030 alt.blend" --camera "Cam B" --model /models/animate_anyone_v2

The options after a file are those of `python -m blender_addon.cli` for that shot only; they
come after the options given for every shot, so they win. Each shot's job folder is
OUT/<file name without .blend> (a name used twice gets _2, _3...), the same layout as
`python -m blender_addon.commands.batch`.

A shot is done, and skipped, when its job folder holds a finished run made from the same .blend
content with the same options (recorded in job.json's provenance under "farm" after the export).
A shot whose export is current but whose frames are not all there goes straight to generation:
the job folder keeps the frames already made.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pose_bridge.errors import PoseBridgeError
from pose_bridge.files import file_sha256
from pose_bridge.job import JobPaths, read_settings, shot_job_dirs, write_settings

from animate_backend.errors import BackendError

PROVENANCE_KEY = "farm"
# The farm sets these itself for every shot: where the job goes, that only the job is written
# (generation runs on the farm's workers), nothing imported, nothing saved, no backend started.
RESERVED_OPTIONS = ("--out", "--export-only", "--import", "--save", "--backend-python")
# Options of blender_addon.cli whose value is a path: relative ones are taken from the shot list's folder.
PATH_OPTIONS = ("--model", "--image", "--image-pose")


class FarmError(BackendError):
    """A farm run that cannot start: a bad shot list, reserved options, no model, no Ray."""

    kind = "bad_job"


@dataclass
class Shot:
    """One shot of the list: its .blend, its job folder and its own options."""

    blend: Path
    job_dir: Path
    options: list[str] = field(default_factory=list)
    origin: str = ""  # "command line" or "shots.txt:3", for messages

    @property
    def name(self) -> str:
        return self.job_dir.name


def check_options(options: list[str], origin: str) -> None:
    """Refuse the options the farm sets itself, naming where they came from."""
    for token in options:
        name = token.split("=", 1)[0]
        if name in RESERVED_OPTIONS:
            raise FarmError(
                f"{origin}: {name} is set by the farm (each shot's job folder is OUT/<shot name>, generation "
                f"runs on the farm's workers); leave it out"
            )


def _absolute_paths(options: list[str], base: Path) -> list[str]:
    """The values of PATH_OPTIONS made absolute against base (workers do not share our working folder)."""
    result = list(options)
    for i, token in enumerate(result):
        name, eq, value = token.partition("=")
        if name not in PATH_OPTIONS:
            continue
        if eq and value and value != "tiny":
            result[i] = f"{name}={(base / Path(value).expanduser()).resolve()}"
        elif not eq and i + 1 < len(result) and result[i + 1] != "tiny":
            result[i + 1] = str((base / Path(result[i + 1]).expanduser()).resolve())
    return result


def read_shot_list(path: str | Path) -> list[tuple[Path, list[str], str]]:
    """(blend, options, origin) for every shot line of a shot-list file."""
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FarmError(f"cannot read the shot list {path} ({exc.strerror or exc})") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        origin = f"{path.name}:{number}"
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise FarmError(f"{origin}: cannot read this line ({exc}); check its quotes") from exc
        if not tokens:
            continue
        if tokens[0].startswith("-"):
            raise FarmError(f"{origin}: a line starts with the shot's .blend file, then its options; got {tokens[0]!r}")
        options = tokens[1:]
        check_options(options, origin)
        blend = (path.parent / Path(tokens[0]).expanduser()).resolve()
        entries.append((blend, _absolute_paths(options, path.parent), origin))
    return entries


def make_shots(
    out: str | Path,
    blends: list[str | Path] = (),
    shot_list: str | Path | None = None,
) -> list[Shot]:
    """The shots of the command line's .blend files followed by those of a shot-list file."""
    entries: list[tuple[Path, list[str], str]] = [
        (Path(blend).expanduser().resolve(), [], "command line") for blend in blends
    ]
    if shot_list is not None:
        entries += read_shot_list(shot_list)
    if not entries:
        raise FarmError("no shots given: name .blend files, or a shot-list file with --shot-list")
    out = Path(out).expanduser().resolve()
    dirs = shot_job_dirs(out, [blend for blend, _, _ in entries])
    return [Shot(blend, job_dir, options, origin) for (blend, options, origin), job_dir in zip(entries, dirs)]


# ----------------------------------------------------------------------------- done shots


def options_fingerprint(model: str, common: list[str], shot: Shot) -> str:
    """A hash of everything given for this shot's export (the model and every option)."""
    chosen = {"model": model, "common": list(common), "shot": list(shot.options)}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _record(job_dir: Path) -> tuple[Any, dict[str, Any]] | None:
    try:
        settings = read_settings(job_dir)
    except PoseBridgeError:
        return None
    return settings, settings.provenance.get(PROVENANCE_KEY) or {}


def export_is_current(job_dir: Path, blend_sha256: str, fingerprint: str) -> bool:
    """True when job_dir holds an export of this very .blend content with these options."""
    found = _record(job_dir)
    if found is None:
        return False
    _, record = found
    paths = JobPaths(job_dir)
    return (
        record.get("options") == fingerprint
        and record.get("blend_sha256") == blend_sha256
        and paths.reference.is_file()
        and paths.poses.is_file()
    )


def remember_export(job_dir: Path, blend_sha256: str, fingerprint: str) -> int:
    """Record in job.json what the export was made from (and that nothing is generated from it
    yet); returns the job's frame count."""
    settings = read_settings(job_dir)
    settings.provenance[PROVENANCE_KEY] = {"options": fingerprint, "blend_sha256": blend_sha256}
    write_settings(job_dir, settings)
    return settings.num_frames


def remember_result(job_dir: Path, result: dict[str, Any]) -> None:
    """Record in job.json that this export was generated (the fingerprint of the result made from it)."""
    settings = read_settings(job_dir)
    settings.provenance.setdefault(PROVENANCE_KEY, {})["generated"] = result.get("fingerprint")
    write_settings(job_dir, settings)


def finished_result(job_dir: Path, blend_sha256: str, fingerprint: str) -> dict[str, Any] | None:
    """out/result.json when the job is done: its export is current, it was generated after that
    export, and every frame (and the video it names) is there; else None."""
    if not export_is_current(job_dir, blend_sha256, fingerprint):
        return None
    paths = JobPaths(job_dir)
    settings, record = _record(job_dir)
    try:
        result = json.loads(paths.result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or not record.get("generated") or record["generated"] != result.get("fingerprint"):
        return None
    if result.get("frames") != settings.num_frames:
        return None
    if not all(paths.frame(i).is_file() for i in range(settings.num_frames)):
        return None
    video = result.get("video")
    if video and not (paths.root / video).is_file():
        return None
    return result
