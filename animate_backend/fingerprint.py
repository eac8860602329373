"""A job's fingerprint: a short hash of everything that changes the generated pictures.

It covers the generation settings, the model's content (loading.model_digest: re-converting
or retraining into the same folder counts as another model), the kind of device and the
precision it runs in, reference.png, poses.json and, when retargeting, reference_pose.json.
fps and output kinds are not part of it: they can change between runs without making
finished frames stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pose_bridge.files import file_sha256
from pose_bridge.job import JobPaths, JobSettings
from pose_bridge.settings import RUNTIME_SETTINGS, SETTINGS

# Settings that change the pictures: every declared setting but fps and where and how the model
# runs. device and precision count through what they resolve to (loading.compute_kind), so
# "auto" and "fp32" on a CPU are the same; the speed settings compute the same video to float32
# rounding, so frames made with one stay valid with another.
FINGERPRINT_SETTINGS = tuple(name for name in SETTINGS if name not in ("fps", *RUNTIME_SETTINGS))


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, None when there is no such file."""
    return file_sha256(path) if path.is_file() else None


def job_fingerprint(paths: JobPaths, settings: JobSettings) -> str:
    """A short hash of everything that changes the generated pictures."""
    from animate_backend.loading import compute_kind, model_digest
    from animate_backend.pipeline import COMPUTATION_VERSION

    data = {
        "computation": COMPUTATION_VERSION,
        "settings": {key: getattr(settings, key) for key in FINGERPRINT_SETTINGS},
        "model_content": model_digest(settings.model),
        "compute": list(compute_kind(settings.device, settings.precision)),
        "reference": file_digest(paths.reference),
        "poses": file_digest(paths.poses),
        "reference_pose": file_digest(paths.reference_pose) if settings.retarget != "none" else None,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
