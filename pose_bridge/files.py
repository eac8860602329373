"""Writing files safely: atomic replacement, ordinary permissions, and no leftovers.

Every output is written to a temporary name next to its target and renamed over it, so a
crash or an error never leaves half a file where a finished one (or a user's) was. The
temporary names all carry PARTIAL_MARK (".reference.png.partial-k3j9x2.png"), so that what
a killed process left behind can be recognised and removed by the next run, and nothing
else ever is.

tempfile.mkstemp and mkdtemp create private files (0600) and folders (0700); finished
outputs get what the user's umask gives any new file (usually 0644 and 0755), so that render
farm nodes and colleagues can read videos, frames, job folders and weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_MARK = ".partial-"


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        # Linux: reading it here is safe with other threads creating files meanwhile.
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_normal_permissions(path: Path | str) -> None:
    """The permissions a file or folder made by open() or mkdir() would have had."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def partial_prefix(name: str) -> str:
    return f".{name}{PARTIAL_MARK}"


@contextmanager
def atomic_path(path: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed over `path`.

    The temporary file keeps `suffix` (default: path's own), for writers that choose the
    format by the file name. On any error it is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path.name), suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        give_normal_permissions(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path | str, data: Any) -> None:
    """Write JSON next to path then rename over it, so a crash never leaves half a file."""
    with atomic_path(path, suffix=".tmp") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


def make_partial_dir(target: Path | str) -> Path:
    """An empty folder next to `target` to build it in (ordinary permissions), then os.replace it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=partial_prefix(target.name), dir=target.parent))
    give_normal_permissions(folder)
    return folder


def remove_partial_files(folder: Path | str) -> int:
    """Remove what killed writers left in `folder` (not below it); returns how many were removed.

    Only names this module makes (PARTIAL_MARK after a leading dot) are touched. Call it
    only where no other process is writing at the same time (e.g. under a job's lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(f".*{PARTIAL_MARK}*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def remove_partial_dirs_of(target: Path | str) -> int:
    """Remove the unfinished build folders of `target` (make_partial_dir) left by a killed process."""
    target = Path(target)
    if not target.parent.is_dir():
        return 0
    removed = 0
    for path in target.parent.glob(f"{partial_prefix(target.name)}*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def remove_partial_files_of(target: Path | str) -> int:
    """Remove the temporary files of `target` (atomic_path) that a killed writer left beside it."""
    target = Path(target)
    if not target.parent.is_dir():
        return 0
    removed = 0
    for path in target.parent.glob(f"{partial_prefix(target.name)}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def check_writable(folder: Path | str) -> None:
    """Raise OSError (with the reason) unless a file can be created in `folder`, creating the folder if needed.

    Tried with a real file, the only check that also catches read-only mounts, full disks,
    access lists and network shares.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=partial_prefix("write-check"), dir=folder)
    os.close(fd)
    os.unlink(probe)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, read a megabyte at a time (a .blend may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
