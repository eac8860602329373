"""Errors a user can cause in the backend. Messages say what is wrong and what to do."""


class BackendError(Exception):
    """Base class of every error the backend raises on purpose.

    `kind` is the protocol's error kind (pose_bridge.backend_protocol.ERROR_KINDS).
    """

    kind = "bad_job"


class WeightsError(BackendError):
    """Weights missing, incomplete, of the wrong shape, or not in a known format."""

    kind = "missing_weights"


class InputError(BackendError):
    """Bad generation input: sizes, frame counts, mismatched poses and reference."""

    kind = "bad_job"


class OutOfMemoryError(BackendError):
    """The device ran out of memory; the message suggests smaller windows or size."""

    kind = "out_of_memory"


class CancelledError(BackendError):
    """The run was cancelled by the user; finished frames are kept."""

    kind = "cancelled"
