"""Fixtures of the training tests (helpers live in training_clips.py)."""

from pathlib import Path

import pytest

from training_clips import make_clip, write_json_manifest


@pytest.fixture(autouse=True)
def cpu_settings():
    """One thread and denormals flushed, then back as they were.

    Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads
    waiting on each other make a step 5-10x slower; one thread also makes runs repeat
    bit for bit. train() flushes denormals itself (10-20x faster CPU kernels); the tests
    that drive the lower-level functions get the same here.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A manifest of two 12-frame PNG clips (64 px training frames are cropped from 96x80)."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    entries = [make_clip(root / "a", frames=12), make_clip(root / "b", frames=12, width=80, height=96)]
    return write_json_manifest(root / "manifest.json", entries)
