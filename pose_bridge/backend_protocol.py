"""The JSON-lines protocol between the add-on and `python -m animate_backend serve`.

One JSON object per line. The add-on writes requests to the server's stdin; the
server writes events to stdout (logs go to stderr). It lives in pose_bridge because
the add-on bundles pose_bridge and must not import the torch-heavy backend.

Requests (add-on -> server), each with a "type" and, except ping/hello/shutdown, an "id":

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
from typing import Any

PROTOCOL_VERSION = 1

STAGES = ("loading", "preparing", "reference", "denoising", "decoding", "encoding", "done")
ERROR_KINDS = ("bad_request", "bad_job", "missing_weights", "out_of_memory", "internal")


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
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a JSON object with a string 'type'")
    return message
