"""Driving poses made ready for the model: fitted to the output canvas, retargeted when asked.

Retargeting (a job's `retarget` "chain" or "global", paper 4.1) rescales the driving poses'
bone lengths to the reference character's. The reference character's skeleton is an
OpenPose frame file in the pixels of the reference image (a job folder's reference_pose.json:
the add-on writes it from the armature at the reference frame; for a user's image,
`python -m pose_bridge detect` makes one).
"""

from __future__ import annotations

import logging
from pathlib import Path

from animate_backend.errors import InputError
from pose_bridge.keypoints import PoseSequence

logger = logging.getLogger(__name__)


def prepare_poses(
    poses: PoseSequence,
    width: int,
    height: int,
    retarget: str = "none",
    reference_pose_file: Path | None = None,
    reference_size: tuple[int, int] | None = None,
) -> PoseSequence:
    """Poses on the model's canvas (aspect kept, centred), retargeted when asked.

    The reference image goes through the pipeline's aspect-preserving preprocessing to the
    same canvas, so fitting both the reference pose and the driving poses puts them in one
    space before the bone lengths are compared.
    """
    fitted = poses.fitted(width, height)
    if retarget == "none":
        return fitted
    from pose_bridge.openpose_json import read_frame
    from pose_bridge.retarget import retarget_sequence

    if reference_pose_file is None or not Path(reference_pose_file).is_file():
        raise InputError(no_reference_pose_message(retarget, reference_pose_file))
    reference_pose = read_frame(reference_pose_file)
    if reference_size is not None and reference_pose.size != tuple(reference_size):
        logger.info(
            "%s is on a %dx%d canvas, reference.png is %dx%d; fitting both to %dx%d",
            Path(reference_pose_file).name, *reference_pose.size, *reference_size, width, height,
        )
    return retarget_sequence(fitted, reference_pose.fitted(width, height), mode=retarget)


def no_reference_pose_message(retarget: str, reference_pose_file: Path | None) -> str:
    name = Path(reference_pose_file).name if reference_pose_file is not None else "reference pose file"
    return (
        f"retarget is {retarget!r} but the job has no {name} (the reference "
        f"character's skeleton, an OpenPose frame file in the pixels of reference.png); add "
        f"one (e.g. `python -m pose_bridge detect` on the reference image) or set retarget to none"
    )


def aspect_note(name: str, size: tuple[int, int], width: int, height: int) -> str | None:
    """A note for the log when `name` (size = (w, h)) is not the output's shape, else None."""
    w, h = size
    if abs(w / h - width / height) > 0.01 * (width / height):
        return (
            f"{name} is {w}x{h}, a different shape from the output {width}x{height}; it is scaled to "
            f"fit and centred (padded), never stretched"
        )
    return None
