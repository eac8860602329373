"""What the farm driver works with: the options of a run and where each shot stands."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from animate_backend.farm.shots import Shot

# A shot in one of these states is finished for this run.
TERMINAL = ("done", "skipped", "failed", "cancelled")


@dataclass
class FarmOptions:
    """How to run a shot list; everything but `model` and `out` has a working default."""

    out: Path
    model: str
    shot_options: list[str] = field(default_factory=list)  # blender_addon.cli options for every shot
    address: str | None = None  # None: start a local Ray; "auto": join the cluster started with `ray start`
    blender: str = ""  # a Blender executable for exports (default: the bpy module of the workers' Python)
    blender_python: str = ""  # the Python with the bpy module (default: the workers' own)
    addon_cli: str = ""  # cli.py for `blender -P` (default: the installed blender_addon's)
    actors: int = 0  # generation actors; 0: one per GPU in the cluster, or one CPU actor without GPUs
    cpus_per_actor: int = 1  # CPUs a CPU-only actor reserves (and its torch threads)
    retries: int = 2  # extra attempts after a lost worker
    poll_s: float = 0.5  # how often progress is read from the actors
    worker_logs: bool = False  # show the workers' own output in this terminal


@dataclass
class ShotState:
    """Where one shot stands; `on_update` callbacks get the list of these."""

    shot: Shot
    status: str = "pending"  # pending, exporting, queued, generating, done, skipped, failed, cancelled
    detail: str = ""  # the video written, or why the shot failed
    stage: str = ""  # the backend's stage while generating (loading, denoising, decoding...)
    frames_total: int | None = None
    frames_done: int = 0
    attempts: int = 0  # generation attempts started
    export_attempts: int = 0
    worker: str = ""  # "pid 1234 on host" of the actor generating it
    worker_pid: int | None = None
    seconds: float = 0.0  # generation time of the attempt that finished
    blend_sha256: str = ""
    fingerprint: str = ""
    result: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.shot.name

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


UpdateCallback = Callable[[list[ShotState]], None]
