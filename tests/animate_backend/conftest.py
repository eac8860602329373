"""Shared fixtures for the backend tests: one tiny random pipeline per session, and inputs for it.

The pipeline is shared: tests must not change its components or scheduler (make a new one with
`make_tiny_pipeline()` for that). The reference bank and pose hook are cleared after every call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animate_backend.tiny import make_tiny_pipeline


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine OpenMP threads spinning
    against other processes make them 10-40x slower. Restored after these tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pipe():
    return make_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def reference_image() -> np.ndarray:
    """A 96x72 (H x W) character-ish image: a coloured figure on a grey background."""
    image = np.full((96, 72, 3), 120, dtype=np.uint8)
    image[20:80, 26:46] = (200, 60, 40)
    image[8:22, 30:42] = (230, 190, 160)
    return image


def make_skeletons(count: int, size: int = 64) -> list[np.ndarray]:
    """`count` skeleton-like images: a bar that moves across the frame, on black."""
    frames = []
    for i in range(count):
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        x = 8 + (i * 3) % (size - 16)
        frame[10:54, x : x + 4] = (255, 85, 0)
        frame[20:24, 16:48] = (0, 255, 85)
        frames.append(frame)
    return frames


@pytest.fixture
def skeletons():
    return make_skeletons
