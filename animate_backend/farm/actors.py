"""The generation actors of a farm run: Ray actors running `farm.workers.Generator`, one per GPU
(or CPU-only ones), and how the driver tells a lost actor from a failed job."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from animate_backend.farm.state import ShotState


@dataclass
class Slot:
    """One generation actor and what it is doing."""

    handle: Any
    identity_ref: Any = None
    identity: dict[str, Any] | None = None  # {"pid", "host", "gpus"} once the actor has answered
    state: ShotState | None = None
    run_ref: Any = None
    progress_ref: Any = None
    started: float = 0.0


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def check_cpus(cpus: int) -> None:
    """A CPU-only actor must fit on one node, or it would wait for room forever."""
    import ray

    from animate_backend.farm.shots import FarmError

    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if cpus > largest:
        raise FarmError(f"--cpus-per-actor {cpus} is more than any node of the cluster has ({largest:g} CPUs)")


@functools.lru_cache(maxsize=None)
def generator_class():
    import ray

    from animate_backend.farm.workers import Generator

    return ray.remote(Generator)


def make_generator(gpu: bool, cpus: int):
    """A fresh Generator actor: one GPU each, or `cpus` CPUs (and as many torch threads)."""
    # max_concurrency=2: progress() and cancel() are answered while run() works.
    # No automatic restarts: a lost actor is replaced by the driver, which also requeues its job.
    actor = generator_class().options(
        num_gpus=1 if gpu else 0, num_cpus=1 if gpu else cpus, max_concurrency=2, max_restarts=0,
    )
    return actor.remote(0 if gpu else cpus)


def is_lost_worker(exc: BaseException) -> bool:
    """True when a Ray error means the worker was lost (not that the job failed)."""
    import ray.exceptions as rex

    lost_types = tuple(
        getattr(rex, name) for name in ("RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError")
        if hasattr(rex, name)
    )
    return isinstance(exc, lost_types)
