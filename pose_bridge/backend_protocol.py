"""The JSON-lines protocol between the add-on and `python -m animate_backend serve`.

One JSON object per line. The add-on writes requests to the server's stdin; the
server writes events to stdout (logs go to stderr). It lives in pose_bridge because
the add-on bundles pose_bridge and must not import the torch-heavy backend.

Requests (add-on -> server), each with a "type" and exactly the fields shown (validate_request
checks them all): an "id" is a non-empty string of at most 200 characters or an integer, a
"job" an absolute folder path.

    {"type": "hello"}                          -> {"type": "hello", "protocol": 1, "version": "..."}
    {"type": "ping"}                           -> {"type": "pong"}
    {"type": "run", "id": "j1", "job": "/abs/job/dir"}
                                               -> progress..., frame..., then done | error | cancelled
    {"type": "cancel", "id": "j1"}             (takes effect within one denoising step)
    {"type": "shutdown"}                       -> {"type": "bye"}, then the process exits

Events (server -> add-on):

    {"type": "progress", "id", "stage", "step", "steps", "window", "windows",
     "frames_done", "frames_total", "eta_s", "message"}
        stage is one of STAGES; numbers not known yet are null.
    {"type": "frame", "id", "index", "path"}  a finished output frame (0-based index)
    {"type": "done", "id", "result": {...}}    result.json's content
    {"type": "cancelled", "id", "frames_done"}
    {"type": "error", "id" (may be null), "message", "kind"}
        message is for a person: what went wrong and what to do. kind is one of ERROR_KINDS.
"""

from __future__ import annotations

import json
import os
from typing import Any

PROTOCOL_VERSION = 1

STAGES = ("loading", "preparing", "reference", "denoising", "decoding", "encoding", "done")
ERROR_KINDS = ("bad_request", "bad_job", "missing_weights", "out_of_memory", "internal")

# The fields each request may carry, besides "type"; all of them are required.
REQUEST_FIELDS: dict[str, tuple[str, ...]] = {
    "hello": (),
    "ping": (),
    "run": ("id", "job"),
    "cancel": ("id",),
    "shutdown": (),
}
# A job id is echoed in every event of its job: a short string or a whole number.


def denoising_units(step: int | None, steps: int | None, window: int | None, windows: int | None) -> tuple[int, int]:
    """(units done, units in all) of the denoising stage from a progress event's counters.

    A unit is one window of one step, and every unit costs about the same. `step` and `window`
    (1-based) name the window that has just finished, so (step - 1) * windows + window units
    are done; a missing window counts the step as finished, a missing step as the first.
    (0, 0) when the totals are not known yet.
    """
    if not steps:
        return 0, 0
    windows = max(1, int(windows or 1))
    total = int(steps) * windows
    done = max(0, int(step or 1) - 1) * windows + int(window or windows)
    return min(done, total), total


MAX_ID_LENGTH = 200
MAX_PATH_LENGTH = 4096


class ProtocolError(ValueError):
    """A line that is not a valid protocol message."""


def encode(message: dict[str, Any]) -> str:
    """One message as one line of JSON, newline included."""
    if "type" not in message:
        raise ProtocolError(f"message without a type: {message!r}")
    return json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n"


def decode(line: str) -> dict[str, Any]:
    """Parse one line; raise ProtocolError with the reason if it is not a message."""
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    except RecursionError:
        # json.loads recurses once per nesting level: a line of 100000 "[" must not end the server.
        raise ProtocolError("not JSON: nested too deeply") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a JSON object with a string 'type'")
    return message


def valid_id(value: Any) -> bool:
    """Whether `value` can be a job id: a non-empty string of at most MAX_ID_LENGTH characters, or an integer."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**53  # exact in every JSON reader, JavaScript's included
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def validate_request(message: dict[str, Any]) -> dict[str, Any]:
    """Check a decoded request field by field; return it, or raise ProtocolError saying what is wrong.

    Every request is checked before the server acts on it, so that nothing a client sends
    (an id that is a list, a path that is a number) can reach code that does not expect it.
    """
    kind = message.get("type")
    if kind not in REQUEST_FIELDS:
        raise ProtocolError(f"unknown request type {kind!r}; expected {', '.join(REQUEST_FIELDS)}")
    expected = REQUEST_FIELDS[kind]
    unknown = sorted(set(message) - {"type", *expected})
    if unknown:
        allowed = ", ".join(expected) if expected else "no other fields"
        raise ProtocolError(f"a {kind} request has unknown fields {unknown}; it takes {allowed}")
    if "id" in expected:
        if "id" not in message:
            raise ProtocolError(f'a {kind} request needs an "id"')
        if not valid_id(message["id"]):
            raise ProtocolError(
                f"the id of a {kind} request must be a non-empty string of at most {MAX_ID_LENGTH} "
                f"characters or an integer, got {_short(message['id'])}"
            )
    if "job" in expected:
        job = message.get("job")
        if not isinstance(job, str) or not job:
            raise ProtocolError(f'a run request needs a "job": the job folder\'s absolute path, got {_short(job)}')
        if len(job) > MAX_PATH_LENGTH or "\0" in job:
            raise ProtocolError("the job folder path is not a usable path (too long or holds a NUL character)")
        if not os.path.isabs(job):
            raise ProtocolError(f"the job folder must be an absolute path, got {job!r}")
    return message


def _short(value: Any) -> str:
    """A value for an error message: its JSON, cut to 80 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
