"""A job's out/log.jsonl: what happened during each run, one JSON object per line."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class JobLog:
    """out/log.jsonl: one JSON object per line, appended, each with a UTC time and seconds since start.

    Appending whole lines with one write keeps earlier runs' lines intact when a run crashes.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(
            {"time": _now(), "elapsed_s": round(time.monotonic() - self.started, 3), **record},
            separators=(",", ":"),
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def message(self, text: str, level: int = logging.INFO) -> None:
        logger.log(level, text)
        self.write({"type": "message", "level": logging.getLevelName(level).lower(), "message": text})

    def records(self) -> list[dict[str, Any]]:
        """Every readable record of the log (a torn last line from a crash is skipped)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def latest(self, type_: str) -> dict[str, Any] | None:
        for record in reversed(self.records()):
            if record.get("type") == type_:
                return record
        return None
