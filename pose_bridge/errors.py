"""Errors a user can cause. Each message says what is wrong and what to do."""


class PoseBridgeError(Exception):
    """Base class of every error pose_bridge raises on purpose."""


class PoseFileError(PoseBridgeError):
    """A pose file or folder cannot be read: malformed, wrong point counts, bad numbers."""


class PoseDataError(PoseBridgeError):
    """Pose data in memory is invalid: wrong shapes, NaN coordinates, empty sequences."""


class JobError(PoseBridgeError):
    """A job folder is missing something or its job.json is invalid."""


class ModelFileError(PoseBridgeError):
    """A detection model file is missing or unusable."""
