"""What runs on the cluster's workers: exporting a shot's job folder, and generation actors.

Only plain data crosses between the driver and these workers: paths and lists of strings in,
dicts of str/int/float/bool/None out (never an exception or object of ours), so a worker needs
nothing but the same packages installed, and a failure is reported the same way from any Python.

Exporting needs Blender (bpy) and a CPU: it runs the add-on's own command line in a child
process, never bpy in this process (animate_backend does not import bpy):

    <python with the bpy module> -m blender_addon.cli SHOT.blend -- --out JOB --export-only ...
    <blender> -b SHOT.blend --python-exit-code 1 -P <add-on>/cli.py -- --out JOB --export-only ...

Generation runs in `Generator` actors, one per GPU (or CPU-only ones), each keeping its model
loaded between jobs in the job runner's PipelineCache, and calling the job runner exactly as
`python -m animate_backend run JOB` does, so the job folder ends up the same.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

import ray

# The last lines of an export's output kept for the report when it fails.
TAIL_LINES = 20


def addon_cli_path() -> str:
    """blender_addon/cli.py of the add-on installed beside this backend (for `blender -P`)."""
    spec = importlib.util.find_spec("blender_addon")  # finds the package without importing it (no bpy)
    if spec is None or not spec.origin:
        return ""
    return str(Path(spec.origin).parent / "cli.py")


def export_command(
    blend: str, cli_args: list[str], *, blender: str = "", python: str = "", addon_cli: str = ""
) -> list[str]:
    """The command line that exports one shot's job folder."""
    if blender:
        script = addon_cli or addon_cli_path()
        # --python-exit-code must come before -P so that a failed export fails the command.
        return [blender, "-b", blend, "--python-exit-code", "1", "-P", script, "--", *cli_args]
    return [python or sys.executable, "-m", "blender_addon.cli", blend, "--", *cli_args]


def _error_line(lines: deque[str]) -> str:
    """The add-on's one-line "error: ..." (it prints one last on every known failure)."""
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return ""


@ray.remote(num_cpus=1, max_retries=2)
def export_shot(
    blend: str, cli_args: list[str], blender: str = "", python: str = "", addon_cli: str = ""
) -> dict[str, Any]:
    """Export one shot; returns {"ok", "returncode", "error", "lost", "host", "command"}.

    "lost" is True when the export was killed by a signal (the machine, not the shot, failed):
    the driver tries it again. Ray itself retries the task when its worker dies (max_retries).
    Cancelling the task (ray.cancel, on Ctrl-C) stops the child process too.
    """
    command = export_command(blend, cli_args, blender=blender, python=python, addon_cli=addon_cli)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        errors="replace", start_new_session=True,  # its own process group: a cancel stops Blender's children too
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
        returncode = process.wait()
    except BaseException:  # KeyboardInterrupt from ray.cancel: do not leave Blender running
        _stop(process)
        raise
    error = ""
    if returncode != 0:
        error = _error_line(tail) or f"the export exited with code {returncode}"
    return {
        "ok": returncode == 0,
        "returncode": returncode,
        "error": error,
        "lost": returncode < 0,
        "host": socket.gethostname(),
        "command": command,
    }


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Generator:
    """A generation worker: one model kept loaded, one job at a time.

    Made a Ray actor by the driver (see actors.make_generator) with num_gpus=1 on GPU clusters.
    `run` blocks for a job; `progress`, `cancel` and `identity` answer meanwhile (the actor is
    created with max_concurrency=2, so a second call runs in a second thread).
    """

    def __init__(self, torch_threads: int = 0) -> None:
        from animate_backend.job_runner import PipelineCache

        if torch_threads > 0:
            import torch

            torch.set_num_threads(torch_threads)
        self._pipelines = PipelineCache()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}

    def identity(self) -> dict[str, Any]:
        """Where this actor runs: {"pid", "host", "gpus"} (gpus: the ids Ray gave it)."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def progress(self) -> dict[str, Any]:
        """The running job's last progress: {"job_dir", "stage", "frames_done", "frames_total"}."""
        with self._lock:
            return dict(self._progress)

    def cancel(self) -> None:
        """Stop the running job within one denoising window (the frames written are kept)."""
        self._cancel.set()

    def run(self, job_dir: str) -> dict[str, Any]:
        """Run one job folder like `python -m animate_backend run`; never raises.

        Returns {"ok": True, "result": <out/result.json>} or {"ok": False, "kind", "user_error",
        "message"}: kind is the protocol's error kind ("bad_job", "missing_weights",
        "out_of_memory", "cancelled") or "internal" for an unexpected exception.
        """
        from animate_backend.events import job_failure_event
        from animate_backend.job_runner import run_job

        self._cancel.clear()
        with self._lock:
            self._progress = {"job_dir": job_dir, "stage": "starting", "frames_done": 0, "frames_total": None}

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") != "progress":
                return
            with self._lock:
                self._progress["stage"] = event.get("stage") or self._progress["stage"]
                for key in ("frames_done", "frames_total"):
                    if event.get(key) is not None:
                        self._progress[key] = int(event[key])

        try:
            result = run_job(job_dir, pipelines=self._pipelines, on_event=on_event, should_cancel=self._cancel.is_set)
        except Exception as exc:  # a bug too: reported with its type, not retried (it would fail the same way)
            event = job_failure_event(exc, job_dir)
            if event["type"] == "cancelled":
                return {"ok": False, "kind": "cancelled", "user_error": False, "message": str(exc)}
            return {"ok": False, "kind": event["kind"], "user_error": event["kind"] != "internal",
                    "message": event["message"]}
        finally:
            with self._lock:
                self._progress["stage"] = "idle"
        return {"ok": True, "result": _plain(result)}


def _plain(value: Any) -> Any:
    """value with anything not JSON-like (a Path, a numpy number) turned into str/int/float."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)
