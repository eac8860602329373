"""`python -m animate_backend serve`: the long-lived local server the Blender add-on talks to.

The protocol is pose_bridge.backend_protocol: one JSON object per line, requests on stdin,
events on stdout, logs on stderr. The model stays loaded between jobs (a PipelineCache).

Threads: the main thread reads requests, so ping, hello and cancel are answered while a job
runs; one worker thread runs the queued jobs one at a time. Every event goes out through one
lock, so lines never interleave. Nothing else may write to stdout: while serving, sys.stdout
points at stderr (a stray print from any library lands in the log), and the protocol keeps a
private handle to the real stdout.

Every request is checked field by field (pose_bridge.backend_protocol.validate_request)
before it is acted on; an invalid one, or any failure while acting on one, becomes an error
event for that request (id null when its id is not a valid id) and never touches the running
job. A job that fails (missing folder, invalid job.json, missing weights, a crash inside the
pipeline, out of memory) becomes an error event and the server goes on serving.

What the server writes, one line each:

    {"type": "hello", "protocol": 1, "version": "0.1.0"}         answer to hello
    {"type": "pong"}                                              answer to ping
    {"type": "progress", "id", "stage", "step", "steps", "window", "windows",
     "frames_done", "frames_total", "eta_s", "message"}
        stages in order: loading, preparing, reference, denoising (one event per window per
        step), decoding (one per frame), encoding, done; a rerun skips what is already made.
    {"type": "frame", "id", "index", "path"}                      a finished frame file
    {"type": "done", "id", "result": {...}}                       out/result.json's content
    {"type": "cancelled", "id", "frames_done"}                    frame files the job now holds
    {"type": "error", "id", "message", "kind"}                    kind: bad_request, bad_job,
                                                                  missing_weights, out_of_memory,
                                                                  internal
    {"type": "bye"}                                               answer to shutdown, then exit 0

Shutdown and end of input cancel the running and queued jobs (each gets its cancelled event)
and exit with status 0. A cancel for a job that is not queued or running is ignored.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import sys
import threading
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import IO, Any

from animate_backend.errors import CancelledError
from animate_backend.events import job_failure_event
from animate_backend.job_runner import PipelineCache, run_job
from pose_bridge.backend_protocol import PROTOCOL_VERSION, ProtocolError, decode, encode, valid_id, validate_request

logger = logging.getLogger(__name__)

# How long shutdown or end of input waits for a cancelled job to stop before exiting anyway.
STOP_TIMEOUT_S = 60.0


def package_version() -> str:
    try:
        return metadata.version("animate-anyone-blender")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class _Job:
    id: Any
    job_dir: str
    cancel: threading.Event = field(default_factory=threading.Event)


class Server:
    """The protocol state: an output channel, a job queue and a worker thread."""

    def __init__(self, out: IO[str], pipelines: PipelineCache | None = None) -> None:
        self._out = out
        self._out_lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._active: dict[Any, _Job] = {}  # queued or running jobs by id
        self._active_lock = threading.Lock()
        self.pipelines = pipelines if pipelines is not None else PipelineCache()
        self._worker = threading.Thread(target=self._work, name="animate-backend-worker", daemon=True)

    # -- output

    def send(self, message: dict[str, Any]) -> None:
        try:
            line = encode(message)
        except (ProtocolError, TypeError, ValueError) as exc:
            # A bug, not a client's fault: say so on the log rather than end a job or the server.
            logger.error("could not encode the %s event (%s): %r", message.get("type"), exc, message)
            return
        with self._out_lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                # The add-on went away; the read loop sees end of input and stops.
                logger.debug("could not send %s: output closed", message.get("type"))

    def error(self, job_id: Any, kind: str, message: str) -> None:
        self.send({"type": "error", "id": job_id, "message": message, "kind": kind})

    # -- input

    def serve_lines(self, lines: IO[str]) -> int:
        """Answer requests until shutdown or end of input; return the exit code."""
        self._worker.start()
        logger.info("animate_backend server ready (protocol %d, version %s)", PROTOCOL_VERSION, package_version())
        try:
            # readline rather than iteration: each request is acted on as soon as its line arrives.
            for line in iter(lines.readline, ""):
                if not line.strip():
                    continue
                if not self.handle(line):
                    return 0
        except KeyboardInterrupt:
            # Ctrl-C reaches the main thread only: cancel the jobs so that the running one stops
            # cleanly and says so in its log.jsonl, rather than dying with the process.
            logger.info("interrupted: cancelling the jobs and stopping")
            self.stop()
            return 130
        logger.info("end of input: stopping")
        self.stop()
        return 0

    def handle(self, line: str) -> bool:
        """Act on one request line; False when the server should exit.

        Whatever goes wrong with one request (an invalid field, a bug while acting on it)
        becomes an error event for that request: it never ends the server or touches the
        running job.
        """
        request: dict[str, Any] | None = None
        try:
            request = decode(line)
            validate_request(request)
            return self._act(request)
        except ProtocolError as exc:
            self.error(_echo_id(request), "bad_request", f"{exc} (request {line.strip()[:200]!r})")
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the server
            logger.error("request %r failed:\n%s", line.strip()[:200], traceback.format_exc())
            self.error(
                _echo_id(request), "internal",
                f"the server failed to act on the request ({type(exc).__name__}: {exc}); the server's "
                f"log (stderr) has the details, please report them",
            )
        return True

    def _act(self, request: dict[str, Any]) -> bool:
        kind = request["type"]
        if kind == "hello":
            self.send({"type": "hello", "protocol": PROTOCOL_VERSION, "version": package_version()})
        elif kind == "ping":
            self.send({"type": "pong"})
        elif kind == "run":
            self._queue_run(request["id"], request["job"])
        elif kind == "cancel":
            self._cancel(request["id"])
        elif kind == "shutdown":
            self.stop()
            self.send({"type": "bye"})
            return False
        return True

    def _queue_run(self, job_id: Any, job_dir: str) -> None:
        with self._active_lock:
            if job_id in self._active:
                self.error(job_id, "bad_request", f"a job with id {job_id!r} is already queued or running")
                return
            job = _Job(job_id, job_dir)
            self._active[job_id] = job
        logger.info("job %s queued: %s", job_id, job_dir)
        self._jobs.put(job)

    def _cancel(self, job_id: Any) -> None:
        with self._active_lock:
            job = self._active.get(job_id)
        if job is None:
            # Already finished, or never started: nothing to stop.
            logger.info("cancel for %r ignored: no such job is queued or running", job_id)
            return
        logger.info("cancelling job %s", job_id)
        job.cancel.set()

    def stop(self) -> None:
        """Cancel every queued and running job and wait (bounded) for the worker to finish."""
        with self._active_lock:
            for job in self._active.values():
                job.cancel.set()
        self._jobs.put(None)
        if self._worker.is_alive():
            self._worker.join(STOP_TIMEOUT_S)
            if self._worker.is_alive():
                logger.warning("the running job did not stop within %.0f s; exiting anyway", STOP_TIMEOUT_S)

    # -- the worker

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception:  # noqa: BLE001 - the worker must outlive any one job
                logger.error("job %s: the worker failed:\n%s", job.id, traceback.format_exc())
            finally:
                with self._active_lock:
                    self._active.pop(job.id, None)

    def _run(self, job: _Job) -> None:
        if job.cancel.is_set():
            self.send({**job_failure_event(CancelledError("cancelled before it started"), job.job_dir), "id": job.id})
            return
        logger.info("job %s started", job.id)
        try:
            result = run_job(
                job.job_dir,
                pipelines=self.pipelines,
                on_event=lambda event: self.send({**event, "id": job.id}),
                should_cancel=job.cancel.is_set,
            )
        except Exception as exc:  # noqa: BLE001 - a crash in one job must not end the server
            event = job_failure_event(exc, job.job_dir)
            if event.get("kind") == "internal":
                logger.error("job %s crashed:\n%s", job.id, traceback.format_exc())
            else:
                logger.info("job %s %s: %s", job.id, event["type"], event.get("message", ""))
            self.send({**event, "id": job.id})
        else:
            logger.info("job %s done in %.1f s", job.id, result.get("seconds", 0.0))
            self.send({"type": "done", "id": job.id, "result": result})


def _echo_id(request: dict[str, Any] | None) -> Any:
    """The id to put in an error event: the request's own when it is a valid id, else null."""
    if request is None:
        return None
    job_id = request.get("id")
    return job_id if valid_id(job_id) else None


def serve(stdin: IO[str] | None = None, stdout: IO[str] | None = None, pipelines: PipelineCache | None = None) -> int:
    """Serve the protocol on stdin/stdout until shutdown or end of input; return the exit code."""
    if stdin is None:
        stdin = sys.stdin
        if hasattr(stdin, "buffer"):
            # Bytes that are not UTF-8 become U+FFFD (and then a bad_request error), never an
            # exception in the read loop.
            stdin = io.TextIOWrapper(stdin.buffer, encoding="utf-8", errors="replace")
    saved_stdout, saved_fd = sys.stdout, None
    if stdout is None:
        # Keep a private handle on the real stdout for the protocol, then point both Python's
        # sys.stdout and file descriptor 1 (used by C libraries) at stderr: anything printed
        # by accident while serving lands in the log, never in the protocol.
        sys.stdout.flush()
        saved_fd = os.dup(1)
        stdout = open(os.dup(saved_fd), "w", encoding="utf-8", newline="\n")
        os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return Server(stdout, pipelines).serve_lines(stdin)
    finally:
        sys.stdout = saved_stdout
        if saved_fd is not None:
            stdout.close()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
