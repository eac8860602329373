"""Running jobs inside Blender's own Python, for people who installed torch there.

Same interface as connection.client.BackendClient (start, alive, ready, run, cancel,
poll_events, shutdown) so the Generate controller does not care which one it drives.
The job runs in a worker thread and its events go into a queue that the UI timer drains;
Blender data is never touched from the worker (the job folder holds everything it needs).
animate_backend (and with it torch) is imported only when a job starts.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
from typing import Any

log = logging.getLogger(__name__)


def available() -> bool:
    """True when torch and animate_backend can be imported in this Python."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers", "animate_backend"))


class InProcessRunner:
    """Runs one job at a time in a worker thread; keeps the loaded model between jobs."""

    python = "(in-process)"

    def __init__(self) -> None:
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._job_id: str | None = None
        self._pipelines = None  # animate_backend.job_runner.PipelineCache, made on first run
        self.ready = False
        self.backend_version: str | None = None

    def start(self) -> None:
        self.ready = True

    @property
    def alive(self) -> bool:
        return self.ready

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, job_dir, job_id: str) -> None:
        if self.busy:
            self._events.put(
                {"type": "error", "id": job_id, "kind": "bad_request", "message": "a job is already running"}
            )
            return
        self._cancel.clear()
        self._job_id = job_id
        self._thread = threading.Thread(
            target=self._work, args=(str(job_dir), job_id), daemon=True, name="animate-inprocess"
        )
        self._thread.start()

    def cancel(self, job_id: str) -> None:
        if job_id == self._job_id:
            self._cancel.set()

    def ping(self) -> None:
        self._events.put({"type": "pong"})

    def poll_events(self) -> list[dict[str, Any]]:
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def shutdown(self, timeout: float = 5.0) -> None:
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        if self._pipelines is not None:
            self._pipelines.clear()
            self._pipelines = None
        self.ready = False

    def _work(self, job_dir: str, job_id: str) -> None:
        from animate_backend.errors import BackendError
        from animate_backend.events import job_failure_event
        from animate_backend.job_runner import PipelineCache, run_job
        from pose_bridge.errors import PoseBridgeError

        if self._pipelines is None:
            self._pipelines = PipelineCache()

        def on_event(event: dict[str, Any]) -> None:
            self._events.put({**event, "id": job_id})

        try:
            result = run_job(job_dir, pipelines=self._pipelines, on_event=on_event, should_cancel=self._cancel.is_set)
        except Exception as exc:  # every failure becomes the event the server would send
            if not isinstance(exc, (BackendError, PoseBridgeError)):
                log.exception("in-process job failed")
            self._events.put({**job_failure_event(exc, job_dir), "id": job_id})
        else:
            self._events.put({"type": "done", "id": job_id, "result": result})


_shared: InProcessRunner | None = None


def shared_runner() -> InProcessRunner:
    global _shared
    if _shared is None:
        _shared = InProcessRunner()
    return _shared


def shutdown_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.shutdown()
        _shared = None
