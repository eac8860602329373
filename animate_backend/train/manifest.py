"""Training manifests: the list of clips a dataset reads (see data.py for the entries' fields).

JSON (a list, or {"clips": [...]}) or JSONL (one clip per line); relative paths are relative to
the manifest's folder. `python -m animate_backend.train manifest` writes one for a folder of
videos and their keypoint files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from animate_backend.errors import InputError
from pose_bridge.files import atomic_write_bytes

logger = logging.getLogger(__name__)


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """The clip entries of a JSON or JSONL manifest, paths resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"training manifest {path} does not exist; write one listing your clips (see data.py)")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".jsonl":
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            loaded = json.loads(text)
            entries = loaded.get("clips") if isinstance(loaded, dict) else loaded
    except json.JSONDecodeError as exc:
        raise InputError(f"training manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise InputError(f"training manifest {path} must be a list of clips or {{\"clips\": [...]}}")
    base = path.parent
    resolved = []
    for entry in entries:
        if isinstance(entry, dict):
            entry = dict(entry)
            for key in ("video", "frames", "keypoints"):
                if isinstance(entry.get(key), str):
                    entry[key] = str((base / entry[key]).resolve())
        resolved.append(entry)
    return resolved


def write_manifest(path: str | Path, entries: list[dict[str, Any]]) -> None:
    """Write a JSONL manifest atomically; paths inside the manifest's folder become relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    lines = []
    for entry in entries:
        entry = dict(entry)
        for key in ("video", "frames", "keypoints"):
            if key in entry:
                p = Path(entry[key]).resolve()
                entry[key] = p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)
        lines.append(json.dumps(entry))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def video_manifest_entries(video_dir: str | Path, keypoint_dir: str | Path | None = None) -> list[dict[str, str]]:
    """Manifest entries pairing each video with `<stem>.poses.json` (what
    `python -m pose_bridge detect VIDEO_DIR --out KEYPOINT_DIR` writes).

    Videos without a keypoint file are left out with a warning naming them.
    """
    video_dir = Path(video_dir)
    keypoint_dir = Path(keypoint_dir) if keypoint_dir is not None else video_dir
    if not video_dir.is_dir():
        raise InputError(f"{video_dir} is not a folder of videos")
    entries, missing = [], []
    for video in sorted(p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        keypoints = keypoint_dir / f"{video.stem}.poses.json"
        if keypoints.is_file():
            entries.append({"video": str(video.resolve()), "keypoints": str(keypoints.resolve()), "name": video.stem})
        else:
            missing.append(video.name)
    if missing:
        logger.warning("%d video(s) have no keypoints in %s and are left out: %s; run "
                       "`python -m pose_bridge detect %s --models DIR --out %s`",
                       len(missing), keypoint_dir, ", ".join(missing[:10]), video_dir, keypoint_dir)
    if not entries:
        raise InputError(f"no video in {video_dir} has a keypoint file <name>.poses.json in {keypoint_dir}")
    return entries
