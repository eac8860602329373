"""Loaded pipelines kept between jobs, so a server or a farm actor loads its model once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animate_backend.schedulers import make_scheduler


@dataclass
class _CachedPipeline:
    loaded: Any  # animate_backend.loading.LoadedPipeline
    default_scheduler: Any  # the model's own, which every job's scheduler is built from


class PipelineCache:
    """Loaded pipelines by (model, its content, device, precision, speed), so a server keeps its
    model between jobs, and loads it again when the folder's weights were replaced meanwhile.
    (Speed settings change a loaded model in place, so a job that wants others gets its own.)

    Only `max_loaded` pipelines stay loaded (one by default: a second full-size model rarely
    fits beside the first); the least recently used one is dropped to load another.
    """

    def __init__(self, max_loaded: int = 1) -> None:
        self.max_loaded = max_loaded
        self._entries: OrderedDict[tuple[str, ...], _CachedPipeline] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(model: str, device: str, precision: str, speed: str) -> tuple[str, ...]:
        from animate_backend.loading import model_digest

        folder = model if model == "tiny" else str(Path(model).expanduser().resolve())
        return (folder, model_digest(model), device, precision, speed)

    def is_loaded(self, model: str, device: str = "auto", precision: str = "auto", speed: str = "auto") -> bool:
        return self._key(model, device, precision, speed) in self._entries

    def get(self, model: str, device: str = "auto", precision: str = "auto", scheduler: str = "ddim",
            speed: str = "auto"):
        """The LoadedPipeline for these settings, loading it on first use, with `scheduler` set
        and the speed settings `speed` turns on (models/speed.py)."""
        from animate_backend.loading import load_pipeline
        from animate_backend.models.speed import speed_settings_for

        key = self._key(model, device, precision, speed)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                while len(self._entries) >= max(1, self.max_loaded):
                    _, dropped = self._entries.popitem(last=False)
                    del dropped
                    empty_device_cache()
                loaded = load_pipeline(model, device=device, precision=precision)
                loaded.pipe.enable_speed(*speed_settings_for(speed, loaded.pipe.device))
                entry = _CachedPipeline(loaded, loaded.pipe.scheduler)
                self._entries[key] = entry
            self._entries.move_to_end(key)
            entry.loaded.pipe.scheduler = make_scheduler(scheduler, entry.default_scheduler)
            return entry.loaded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        empty_device_cache()


def empty_device_cache() -> None:
    """Hand the memory of dropped models back (Python's garbage first, then CUDA's cache)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
