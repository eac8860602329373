"""The Animate Anyone diffusion backend: models, pipeline, weights, jobs and the local server.

Importing this package is cheap (no torch): heavy modules load on first use. `PoseGuider` is
reachable as `animate_backend.PoseGuider` because diffusers' `from_pretrained` looks a saved
component's class up on its top-level package (model_index.json names "animate_backend").
"""

from __future__ import annotations

__all__ = ["AnimateAnyonePipeline", "PoseGuider"]


def __getattr__(name: str):
    if name == "PoseGuider":
        from animate_backend.models.pose_guider import PoseGuider

        return PoseGuider
    if name == "AnimateAnyonePipeline":
        from animate_backend.pipeline import AnimateAnyonePipeline

        return AnimateAnyonePipeline
    raise AttributeError(f"module 'animate_backend' has no attribute {name!r}")
