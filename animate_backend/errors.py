"""Errors a user can cause in the backend. Messages say what is wrong and what to do."""

from __future__ import annotations


class BackendError(Exception):
    """Base class of every error the backend raises on purpose.

    `kind` is the protocol's error kind (pose_bridge.backend_protocol.ERROR_KINDS).
    """

    kind = "bad_job"


class WeightsError(BackendError):
    """Weights missing, incomplete, of the wrong shape, or not in a known format."""

    kind = "missing_weights"


class InputError(BackendError, ValueError):
    """Bad generation input: sizes, frame counts, mismatched poses and reference.

    Also a ValueError, so code that calls the library functions directly can catch it as one.
    """

    kind = "bad_job"


class OutOfMemoryError(BackendError):
    """The device ran out of memory; the message suggests smaller windows or size."""

    kind = "out_of_memory"


class CancelledError(BackendError):
    """The run was cancelled by the user; finished frames are kept."""

    kind = "cancelled"


# ----------------------------------------------------------------------------- out of memory


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device running out of memory.

    CUDA raises torch.OutOfMemoryError; MPS and some CPU allocators a RuntimeError saying so.
    """
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def out_of_memory_error(
    exc: BaseException, width: int | None = None, height: int | None = None, context_frames: int | None = None
) -> OutOfMemoryError:
    """The one OutOfMemoryError every part of the backend raises for `exc`, with what to try.

    The size and window length are named when known, since they are what to change.
    """
    if width is not None and height is not None and context_frames is not None:
        what = f"generating {width}x{height} with {context_frames}-frame windows"
    else:
        what = f"({exc})"
    return OutOfMemoryError(
        f"the device ran out of memory {what}. Try, in this order: a smaller context window "
        f"(context_frames, e.g. 16 or 12), fp16 precision, a smaller output size, or close other "
        f"programs using the GPU"
    )
