"""Running a job synchronously, for the command-line script and batch mode.

`blender -b shot.blend -P cli.py` has no event loop (timers never fire), so instead of
the long-lived server the panel uses, the job runs as one child process and this call
waits for it:

    <backend python> -m animate_backend run JOB_DIR

Its log (stderr) is streamed line by line to a callback (default: this module's logger).
A subprocess, never multiprocessing: an installed extension is imported as
bl_ext.<repo>.<id>, which a multiprocessing child could not import, and the backend's
Python (with torch) is usually not Blender's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable

from pose_bridge.job import JobPaths

from ..errors import AddonError

log = logging.getLogger(__name__)

PYTHON_ENV_VAR = "ANIMATE_BACKEND_PYTHON"


def _backend_importable_here() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("animate_backend", "torch"))


def _preference_python() -> str:
    """The backend Python set in the add-on's preferences ("" outside Blender's add-on system)."""
    try:
        from ..ui.preferences import get_preferences, resolved_backend_python
    except ImportError:
        return ""
    try:
        return resolved_backend_python(get_preferences())
    except (AttributeError, KeyError, RuntimeError):
        return ""


def find_backend_python(python: str | None = None) -> str:
    """The interpreter that runs the backend.

    In order: python when given; $ANIMATE_BACKEND_PYTHON; the add-on preference (or the
    environment that Set up backend made); this very interpreter when animate_backend and
    torch import here (the bpy module in the project's own environment).
    """
    for candidate, origin in (
        (python, "the given backend Python"),
        (os.environ.get(PYTHON_ENV_VAR, ""), f"${PYTHON_ENV_VAR}"),
        (_preference_python(), "the add-on preference"),
    ):
        if candidate:
            if not Path(candidate).is_file():
                raise AddonError(
                    f"{origin} is {candidate}, which does not exist; point it at the backend environment's "
                    f"python (or run Set up backend in the add-on preferences)"
                )
            return candidate
    if _backend_importable_here():
        return sys.executable
    raise AddonError(
        f"no backend Python found: set {PYTHON_ENV_VAR}=/path/to/backend/venv/bin/python, give "
        f"--backend-python, or run Set up backend in the add-on preferences"
    )


def _last_error_line(lines: deque[str]) -> str:
    for line in reversed(lines):
        if line.lower().startswith("error:"):
            return line[len("error:"):].strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return ""


def run_job(
    job_dir: str | os.PathLike,
    python: str | None = None,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the job folder to the end in a backend child process; returns its out/result.json.

    on_line gets every line the backend logs (default: logged at INFO). A non-zero exit
    raises AddonError with the backend's last error line; Ctrl+C stops the child too.
    """
    paths = JobPaths(Path(job_dir))
    if not paths.settings.is_file():
        raise AddonError(f"{paths.root} is not a job folder (no job.json); export the job first")
    python = find_backend_python(python)
    command = [python, "-m", "animate_backend", "run", str(paths.root)]
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONUNBUFFERED"] = "1"
    emit = on_line or (lambda line: log.info("backend: %s", line))
    log.info("running %s", " ".join(command))
    tail: deque[str] = deque(maxlen=50)
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=child_env,
        )
    except OSError as exc:
        raise AddonError(f"cannot start the backend with {python} ({exc}); check the backend Python") from exc
    try:
        assert process.stdout is not None
        for raw in process.stdout:  # universal newlines: progress bars' \r updates become lines too
            line = raw.rstrip()
            if line:
                tail.append(line)
                emit(line)
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    if code != 0:
        reason = _last_error_line(tail) or f"exit code {code}"
        raise AddonError(f"the backend failed on {paths.root}: {reason}")
    try:
        return json.loads(paths.result.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AddonError(f"the backend finished but {paths.result} cannot be read ({exc}); run the job again") from exc
