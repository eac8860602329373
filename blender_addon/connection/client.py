"""The add-on's side of `<backend python> -m animate_backend serve`.

The backend runs in its own Python (torch is gigabytes and Blender's Python has none),
started with subprocess.Popen: an extension is imported as bl_ext.<repo>.<id>, so a
multiprocessing child could not even import the add-on. Requests go to the server's
stdin and events come back on its stdout, one JSON object per line
(pose_bridge.backend_protocol). A reader thread puts events into a queue, so that the
UI polls without ever blocking; another keeps the last lines of stderr, which are what
a person needs to see when the process dies.

Two things never reach the caller as exceptions but as ordinary "error" events, so a
poller handles them like any backend error: a protocol version that does not match
this add-on, and a process that died.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from pose_bridge import backend_protocol
from pose_bridge.backend_protocol import PROTOCOL_VERSION, ProtocolError

from ..errors import AddonError

log = logging.getLogger(__name__)

# Kind of the synthetic error events made here (the backend's own kinds are in ERROR_KINDS).
KIND_DIED = "backend_died"
KIND_PROTOCOL = "protocol_mismatch"


class BackendStartError(AddonError):
    """The backend process could not be started or did not answer."""


class BackendClient:
    """One long-lived backend server process; keeps the model loaded between jobs.

    Not thread-safe: use it from one thread (Blender's main thread); only the reader
    threads made here touch the process's output.
    """

    def __init__(
        self,
        python: str | os.PathLike,
        *,
        args: tuple[str, ...] = ("-m", "animate_backend", "serve"),
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        stderr_lines: int = 40,
    ) -> None:
        self.python = str(python)
        self.args = tuple(args)
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.ready = False  # True once the backend's hello matched our protocol
        self.backend_version: str | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._pending: list[dict[str, Any]] = []  # requests held until the hello arrives
        self._threads: list[threading.Thread] = []
        self._stdout_done = threading.Event()
        self._handled: collections.deque[dict[str, Any]] = collections.deque()  # events for the caller
        self._failed: str | None = None  # why the client gave up (sent once as an error event)
        self._failed_kind = KIND_DIED
        self._failure_reported = False

    # ------------------------------------------------------------ process life

    def start(self) -> None:
        """Start the process and say hello; returns at once (the answer comes as an event)."""
        if self.alive:
            return
        if not self.python:
            raise BackendStartError(
                "No backend Python is set: open Preferences > Add-ons > Animate Anyone and press "
                "Set up backend, or point 'Backend Python' at a Python that has animate_backend installed"
            )
        if not Path(self.python).is_file():
            raise BackendStartError(
                f"The backend Python {self.python} does not exist: press Set up backend in the add-on's "
                f"preferences, or fix the 'Backend Python' path there"
            )
        if self.process is not None:
            self.shutdown(timeout=1.0)  # the last process died or failed: close what is left of it
        self._pending = []
        env = dict(os.environ if self.env is None else self.env)
        # Blender may run with its own PYTHONHOME; the backend is another Python.
        env.pop("PYTHONHOME", None)
        env["PYTHONUNBUFFERED"] = "1"
        command = [self.python, *self.args]
        log.info("starting backend: %s", " ".join(command))
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                # `-m` puts the working folder first on sys.path: start beside the interpreter, so a
                # folder that happens to hold an old animate_backend cannot shadow the installed one.
                cwd=self.cwd if self.cwd is not None else Path(self.python).parent,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
            )
        except OSError as exc:
            raise BackendStartError(f"Could not start the backend ({' '.join(command)}): {exc}") from exc
        self.ready = False
        self.backend_version = None
        self._failed = None
        self._failure_reported = False
        self._events = queue.Queue()
        self._handled.clear()
        self._stderr.clear()
        self._stdout_done.clear()
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self.process,), daemon=True, name="animate-backend-out"),
            threading.Thread(target=self._read_stderr, args=(self.process,), daemon=True, name="animate-backend-err"),
        ]
        for thread in self._threads:
            thread.start()
        self._write({"type": "hello"})

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self._failed is None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the server to exit; terminate, then kill it if it does not."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                process.stdin.write(backend_protocol.encode({"type": "shutdown"}))
                process.stdin.flush()
            except (OSError, ValueError):
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        for thread in self._threads:
            thread.join(timeout=1.0)
        self.process = None
        self.ready = False

    def kill(self) -> None:
        """Stop the process at once (used when it does not answer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    # ------------------------------------------------------------ requests

    def run(self, job_dir: str | os.PathLike, job_id: str) -> None:
        """Ask for a job to be run; events about it carry job_id."""
        self._request({"type": "run", "id": job_id, "job": str(Path(job_dir).resolve())})

    def cancel(self, job_id: str) -> None:
        """Ask the server to stop the job; it answers with a "cancelled" event (frames done so far kept)."""
        if self.process is not None and self.process.poll() is None:
            self._request({"type": "cancel", "id": job_id})

    def ping(self) -> None:
        self._request({"type": "ping"})

    def _request(self, message: dict[str, Any]) -> None:
        if self.ready:
            self._write(message)
        else:
            self._pending.append(message)

    def _write(self, message: dict[str, Any]) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            self._fail_dead()
            return
        try:
            process.stdin.write(backend_protocol.encode(message))
            process.stdin.flush()
        except (OSError, ValueError):
            self._fail_dead()

    # ------------------------------------------------------------ events

    def poll_events(self) -> list[dict[str, Any]]:
        """Every event that arrived since the last call, without waiting."""
        self._drain()
        events = list(self._handled)
        self._handled.clear()
        return events

    def wait_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event, waiting at most timeout seconds (for command-line use and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            if self._handled:
                return self._handled.popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                event = self._events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            handled = self._handle(event)
            if handled is not None:
                self._handled.append(handled)

    def _drain(self) -> None:
        """Move arrived events through the handshake into the handled list; add a failure event once."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            handled = self._handle(event)
            if handled is not None:
                self._handled.append(handled)
        self._check_dead()
        if self._failed is not None and not self._failure_reported:
            self._failure_reported = True
            self._handled.append(self._failure_event())

    def connect(self, timeout: float = 180.0) -> None:
        """Start if needed and wait for the hello; raise BackendStartError if it does not come."""
        self.start()
        deadline = time.monotonic() + timeout
        while not self.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise BackendStartError(
                    f"The backend did not answer within {timeout:.0f} s.{self._stderr_text()}"
                )
            event = self.wait_event(min(remaining, 1.0))
            if event is not None and event.get("type") == "error":
                raise BackendStartError(event["message"])

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    def _handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Consume the handshake; pass every other event on."""
        kind = event.get("type")
        if kind == "hello":
            protocol = event.get("protocol")
            self.backend_version = event.get("version")
            if protocol != PROTOCOL_VERSION:
                self._failed = (
                    f"The backend speaks protocol version {protocol} (backend {self.backend_version}) but this "
                    f"add-on speaks version {PROTOCOL_VERSION}: update the backend to the add-on's version "
                    f"(Preferences > Add-ons > Animate Anyone > Set up backend)"
                )
                self._failed_kind = KIND_PROTOCOL
                self.shutdown(timeout=2.0)
                return None
            self.ready = True
            pending, self._pending = self._pending, []
            for message in pending:
                self._write(message)
            return None
        if kind == "error" and not self.ready and event.get("id") is None:
            # A backend too old to know "hello" answers it with an error.
            self._failed = (
                f"The backend did not accept the handshake ({event.get('message')}); it is probably an older "
                f"version: update it (Preferences > Add-ons > Animate Anyone > Set up backend)"
            )
            self._failed_kind = KIND_PROTOCOL
            self.shutdown(timeout=2.0)
            return None
        return event

    def _check_dead(self) -> None:
        if self._failed is not None or self.process is None:
            return
        # Dead means: exited, and everything it wrote has been read.
        if self.process.poll() is not None and self._stdout_done.is_set() and self._events.empty():
            self._fail_dead()

    def _fail_dead(self) -> None:
        if self._failed is not None:
            return
        process = self.process
        code = process.poll() if process is not None else None
        if process is not None and code is None:
            # Writing failed but it still runs: it closed its stdin; treat it as broken.
            process.kill()
            code = process.wait()
        # Give the stderr reader a moment to collect the last words.
        for thread in self._threads[1:]:
            thread.join(timeout=1.0)
        self._failed = f"The backend process stopped unexpectedly (exit code {code}).{self._stderr_text()}"
        self._failed_kind = KIND_DIED

    def _failure_event(self) -> dict[str, Any]:
        return {"type": "error", "id": None, "kind": self._failed_kind, "message": self._failed}

    def _stderr_text(self) -> str:
        lines = [line for line in self._stderr if line.strip()]
        if not lines:
            return ""
        return " Last lines of its log:\n" + "\n".join(lines[-12:])

    # ------------------------------------------------------------ reader threads

    def _read_stdout(self, process: subprocess.Popen) -> None:
        try:
            for line in process.stdout:
                if not line.strip():
                    continue
                try:
                    self._events.put(backend_protocol.decode(line))
                except ProtocolError:
                    # Something printed to stdout that is not ours (a library's print): keep it as log.
                    self._stderr.append(f"(stdout) {line.rstrip()}")
        except (OSError, ValueError):
            pass
        finally:
            self._stdout_done.set()

    def _read_stderr(self, process: subprocess.Popen) -> None:
        try:
            for line in process.stderr:
                self._stderr.append(line.rstrip("\n"))
                log.debug("backend: %s", line.rstrip())
        except (OSError, ValueError):
            pass


# ---------------------------------------------------------------- the shared server

_shared: BackendClient | None = None


def shared_client(python: str, env: dict[str, str] | None = None) -> BackendClient:
    """The server the add-on keeps running between jobs; a new one when the last died or the Python changed."""
    global _shared
    if _shared is not None and (not _shared.alive or _shared.python != str(python)):
        _shared.shutdown(timeout=2.0)
        _shared = None
    if _shared is None:
        _shared = BackendClient(python, env=env)
    return _shared


def shutdown_shared(timeout: float = 5.0) -> None:
    """Stop the shared server (on unregister, or from the panel to free memory)."""
    global _shared
    if _shared is not None:
        _shared.shutdown(timeout=timeout)
        _shared = None


def shared_is_running() -> bool:
    return _shared is not None and _shared.alive
