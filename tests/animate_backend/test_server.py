"""`python -m animate_backend serve` through a real subprocess, as the Blender add-on runs it.

Every wait has a timeout, so a hung server fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pose_bridge.backend_protocol import PROTOCOL_VERSION, decode, encode
from pose_bridge.job import JobPaths, JobSettings, write_job
from pose_bridge.keypoints import Pose, PoseSequence

TIMEOUT_S = 120.0
# One torch thread: tiny models are fastest so on a busy CI machine (see conftest.py).
SERVER_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def figure(size: int, lift: float) -> Pose:
    body = np.ones((18, 3), np.float32)
    body[:, 0] = np.linspace(0.3, 0.7, 18) * size
    body[:, 1] = np.linspace(0.1, 0.9, 18) * size
    body[4, 1] -= lift * size * 0.3
    return Pose(size, size, body=body)


def make_job(job_dir: Path, frames: int = 3, steps: int = 2) -> Path:
    reference = np.zeros((64, 64, 3), np.uint8)
    reference[16:48, 20:44] = (200, 120, 60)
    settings = JobSettings(model="tiny", width=64, height=64, fps=12.0, frame_start=1, frame_end=frames,
                           steps=steps, guidance_scale=1.0, seed=3, context_frames=8, context_overlap=2, device="cpu")
    write_job(job_dir, settings, reference, PoseSequence([figure(64, i / frames) for i in range(frames)], 12.0))
    return job_dir


class ServerProcess:
    """The server in a subprocess; a reader thread checks every stdout line is a protocol message."""

    def __init__(self, log_path: Path) -> None:
        self.stderr = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "animate_backend", "serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
            env=SERVER_ENV,
        )
        self.log_path = log_path
        self.messages: queue.Queue = queue.Queue()
        self.bad_lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(decode(line))
            except Exception:
                self.bad_lines.append(line)
        self.messages.put(None)  # end of output

    def send(self, message: dict) -> None:
        self.proc.stdin.write(encode(message))
        self.proc.stdin.flush()

    def next(self, timeout: float = TIMEOUT_S) -> dict:
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no message from the server within {timeout} s; its log:\n{self.log()}")
        assert message is not None, f"the server closed its output; its log:\n{self.log()}"
        return message

    def until(self, type_: str, job_id=None, timeout: float = TIMEOUT_S) -> tuple[dict, list[dict]]:
        """Read messages until one of type_ (for job_id, if given); return it and those before it."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if message["type"] == type_ and (job_id is None or message.get("id") == job_id):
                return message, seen
            seen.append(message)

    def log(self) -> str:
        self.stderr.flush()
        return self.log_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, as the add-on keeps one running across jobs."""
    process = ServerProcess(tmp_path_factory.mktemp("server") / "stderr.log")
    yield process
    process.close()
    assert not process.bad_lines, f"stdout carried lines that are not protocol messages: {process.bad_lines}"


def test_hello_gives_the_protocol_version(server):
    server.send({"type": "hello"})
    hello = server.next()
    assert hello["type"] == "hello" and hello["protocol"] == PROTOCOL_VERSION
    assert isinstance(hello["version"], str) and hello["version"]


def test_run_reports_progress_frames_and_done(server, tmp_path):
    job = make_job(tmp_path / "job", frames=3)
    server.send({"type": "run", "id": "j1", "job": str(job)})
    done, before = server.until("done", "j1")

    progress = [m for m in before if m["type"] == "progress"]
    assert all(m["id"] == "j1" for m in before)
    assert [s for s in ("loading", "denoising", "decoding", "encoding", "done")
            if s in {m["stage"] for m in progress}] == ["loading", "denoising", "decoding", "encoding", "done"]
    denoising = [m for m in progress if m["stage"] == "denoising"]
    assert denoising[-1]["steps"] == 2 and denoising[-1]["windows"] == 1
    assert any(m["eta_s"] is not None for m in denoising)
    frames = [m for m in before if m["type"] == "frame"]
    assert [m["index"] for m in frames] == [0, 1, 2]
    assert all(Path(m["path"]).is_file() for m in frames)

    paths = JobPaths(job)
    assert done["result"] == json.loads(paths.result.read_text())
    assert done["result"]["untrained"] is True and paths.video.is_file()


def test_ping_is_answered_while_a_job_runs_and_cancel_is_quick(server, tmp_path):
    long_job = make_job(tmp_path / "long", frames=3, steps=500)
    short_job = make_job(tmp_path / "short", frames=2)
    server.send({"type": "run", "id": "long", "job": str(long_job)})
    server.send({"type": "run", "id": "short", "job": str(short_job)})  # queued behind "long"
    first, _ = server.until("progress", "long")
    while first["stage"] != "denoising":
        first, _ = server.until("progress", "long")

    server.send({"type": "ping"})
    pong, _ = server.until("pong", timeout=30)
    assert pong == {"type": "pong"}

    cancelled_at = time.monotonic()
    server.send({"type": "cancel", "id": "long"})
    cancelled, before = server.until("cancelled", "long", timeout=60)
    assert time.monotonic() - cancelled_at < 15, "cancel takes effect within a denoising step"
    assert not any(m["type"] == "done" for m in before)
    assert not any(m.get("id") == "short" for m in before), "jobs run one at a time"
    assert cancelled["frames_done"] == 0
    assert not JobPaths(long_job).latents.exists() and not JobPaths(long_job).result.exists()

    # The queued job runs next, on the model the server already has loaded.
    done, before = server.until("done", "short")
    loading = [m for m in before if m["type"] == "progress" and m["stage"] == "loading"]
    assert loading and "already loaded" in loading[0]["message"]
    assert done["result"]["frames"] == 2


def test_bad_jobs_are_errors_and_the_server_keeps_serving(server, tmp_path):
    server.send({"type": "run", "id": "missing", "job": str(tmp_path / "nowhere")})
    error, _ = server.until("error", "missing")
    assert error["kind"] == "bad_job" and "does not exist" in error["message"]

    broken = make_job(tmp_path / "broken", frames=2)
    (broken / "job.json").write_text("{ this is not json")
    server.send({"type": "run", "id": "broken", "job": str(broken)})
    error, _ = server.until("error", "broken")
    assert error["kind"] == "bad_job" and "job.json" in error["message"]

    no_weights = make_job(tmp_path / "no_weights", frames=2)
    settings = json.loads((no_weights / "job.json").read_text())
    settings["model"] = str(tmp_path / "no_such_model")
    (no_weights / "job.json").write_text(json.dumps(settings))
    server.send({"type": "run", "id": "weights", "job": str(no_weights)})
    error, _ = server.until("error", "weights")
    assert error["kind"] == "missing_weights"

    server.send({"type": "ping"})
    assert server.until("pong", timeout=30)[0] == {"type": "pong"}


def test_malformed_requests_are_bad_request_errors(server):
    server.proc.stdin.write("this is not json\n")
    server.proc.stdin.flush()
    error = server.next(30)
    assert error["type"] == "error" and error["kind"] == "bad_request" and error["id"] is None

    server.send({"type": "run", "id": "x"})
    error = server.next(30)
    assert error["kind"] == "bad_request" and error["id"] == "x"

    server.send({"type": "dance"})
    error = server.next(30)
    assert error["kind"] == "bad_request" and "unknown request type" in error["message"]


def test_shutdown_says_bye_and_exits_0(tmp_path):
    process = ServerProcess(tmp_path / "stderr.log")
    try:
        process.send({"type": "hello"})
        assert process.next()["type"] == "hello"
        process.send({"type": "shutdown"})
        assert process.next(30) == {"type": "bye"}
        assert process.proc.wait(timeout=30) == 0
    finally:
        process.close()


def test_end_of_input_cancels_the_running_job_and_exits_cleanly(tmp_path):
    """What happens when Blender quits or crashes: the server's stdin closes."""
    job = make_job(tmp_path / "job", frames=3, steps=500)
    process = ServerProcess(tmp_path / "stderr.log")
    try:
        process.send({"type": "run", "id": "j", "job": str(job)})
        progress, _ = process.until("progress", "j")
        while progress["stage"] != "denoising":
            progress, _ = process.until("progress", "j")
        process.proc.stdin.close()
        cancelled, _ = process.until("cancelled", "j", timeout=60)
        assert cancelled["frames_done"] == 0
        assert process.proc.wait(timeout=30) == 0
    finally:
        process.close()


def test_stray_prints_go_to_stderr_not_into_the_protocol(monkeypatch, capsys):
    """In-process: whatever prints while serving (a library, a forgotten debug line) lands on stderr."""
    import io

    from animate_backend import server as server_module

    def chatty_version() -> str:
        print("a stray debug line")
        return "9.9"

    monkeypatch.setattr(server_module, "package_version", chatty_version)
    out = io.StringIO()
    code = server_module.serve(io.StringIO('{"type": "hello"}\n{"type": "shutdown"}\n'), out)

    assert code == 0
    assert [decode(line) for line in out.getvalue().splitlines()] == [
        {"type": "hello", "protocol": PROTOCOL_VERSION, "version": "9.9"},
        {"type": "bye"},
    ]
    assert "a stray debug line" in capsys.readouterr().err


class _Lines:
    """An in-process stdin/stdout pair: requests fed one at a time, replies collected."""

    def __init__(self) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()

    def readline(self) -> str:
        return self.requests.get(timeout=TIMEOUT_S)

    def write(self, text: str) -> None:
        for line in text.splitlines():
            self.replies.put(decode(line))

    def flush(self) -> None:
        pass

    def ask(self, message: dict) -> dict:
        self.requests.put(encode(message))
        return self.replies.get(timeout=30)


def test_crash_and_out_of_memory_inside_a_job_are_error_events(monkeypatch, tmp_path):
    """In-process, with run_job made to fail the two ways a real pipeline can."""
    from animate_backend import server as server_module

    failures = iter([ZeroDivisionError("float division by zero"),
                     RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")])

    def failing_run_job(job_dir, **kwargs):
        raise next(failures)

    monkeypatch.setattr(server_module, "run_job", failing_run_job)
    lines = _Lines()
    thread = threading.Thread(target=server_module.serve, args=(lines, lines), daemon=True)
    thread.start()

    crash = lines.ask({"type": "run", "id": "a", "job": str(tmp_path)})
    assert crash["type"] == "error" and crash["id"] == "a" and crash["kind"] == "internal"
    assert "ZeroDivisionError" in crash["message"] and "log" in crash["message"]
    oom = lines.ask({"type": "run", "id": "b", "job": str(tmp_path)})
    assert oom["kind"] == "out_of_memory" and "smaller context window" in oom["message"]
    assert lines.ask({"type": "ping"}) == {"type": "pong"}
    assert lines.ask({"type": "shutdown"}) == {"type": "bye"}
    thread.join(30)
    assert not thread.is_alive()


def test_malformed_requests_during_a_running_job_never_touch_it(tmp_path):
    """Ids that are lists or objects, wrong field types, garbage bytes: each one is a bad_request
    error event, and the job that was running when they arrived finishes as if nothing happened."""
    job = make_job(tmp_path / "job", frames=2, steps=40)
    process = ServerProcess(tmp_path / "stderr.log")
    try:
        process.send({"type": "run", "id": "busy", "job": str(job)})
        progress, _ = process.until("progress", "busy")
        while progress["stage"] != "denoising":
            progress, _ = process.until("progress", "busy")

        bad_requests = [
            {"type": "run", "id": ["a", "list"], "job": str(job)},
            {"type": "run", "id": {"an": "object"}, "job": str(job)},
            {"type": "cancel", "id": ["busy"]},
            {"type": "cancel", "id": {"busy": 1}},
            {"type": "run", "id": True, "job": str(job)},
            {"type": "run", "id": "j2", "job": 42},
            {"type": "run", "id": "j3", "job": "relative/path"},
            {"type": "run", "id": "j4", "job": str(job), "priority": "high"},
            {"type": ["run"]},
        ]
        for request in bad_requests:
            process.send(request)
        process.proc.stdin.write("[" * 100000 + "\n")  # deeper than json.loads can recurse
        process.proc.stdin.write('{"type": "ping", "id": NaN}\n')
        process.proc.stdin.flush()
        process.proc.stdin.buffer.write(b'\xff\xfe{"type": "ping"}\n')  # not UTF-8
        process.proc.stdin.buffer.flush()

        errors = []
        while len(errors) < len(bad_requests) + 3:
            message = process.next(60)
            if message["type"] == "error":
                errors.append(message)
            assert message["type"] not in ("cancelled", "done") or message["id"] == "busy"
            assert message["type"] != "cancelled", f"a bad request cancelled the job: {message}"
        assert all(e["kind"] == "bad_request" for e in errors), errors
        # An error is addressed to the request's id when that id is valid, else to nobody.
        assert [e["id"] for e in errors[:len(bad_requests)]] == [None] * 5 + ["j2", "j3", "j4", None]
        assert "id of a run request" in errors[0]["message"]

        done, before = process.until("done", "busy")
        assert not any(m["type"] in ("error", "cancelled") and m.get("id") == "busy" for m in before)
        assert done["result"]["frames"] == 2 and JobPaths(job).video.is_file()
        process.send({"type": "ping"})
        assert process.until("pong", timeout=30)[0] == {"type": "pong"}
        assert process.proc.poll() is None, "the server is still running"
    finally:
        process.close()
    assert not process.bad_lines


def test_ctrl_c_cancels_the_running_job_and_its_log_says_so(tmp_path):
    import signal

    job = make_job(tmp_path / "job", frames=2, steps=500)
    process = ServerProcess(tmp_path / "stderr.log")
    try:
        process.send({"type": "run", "id": "j", "job": str(job)})
        progress, _ = process.until("progress", "j")
        while progress["stage"] != "denoising":
            progress, _ = process.until("progress", "j")
        process.proc.send_signal(signal.SIGINT)
        cancelled, _ = process.until("cancelled", "j", timeout=60)
        assert process.proc.wait(timeout=30) == 130
    finally:
        process.close()
    records = [json.loads(line) for line in JobPaths(job).log.read_text().splitlines()]
    assert records[-1]["type"] == "cancelled"
