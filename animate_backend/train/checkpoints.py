"""A training run's checkpoints: checkpoints/checkpoint-STEP folders, written whole or not at all.

Each holds accelerate's saved state (models, optimizer, lr scheduler, EMA, RNG states) and
the run's position (TrainingProgress), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from animate_backend.errors import InputError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


class TrainingProgress:
    """Counters saved with every checkpoint (accelerate's register_for_checkpointing)."""

    def __init__(self) -> None:
        self.global_step = 0  # optimizer steps
        self.micro_step = 0  # batches consumed over the whole run
        self.epoch = 0
        self.batch_in_epoch = 0  # batches consumed in the current epoch

    def state_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def list_checkpoints(output_dir: Path) -> list[Path]:
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))



CHECKPOINT_COMPLETE = "checkpoint.json"


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int | None) -> Path:
    """accelerator.save_state into checkpoints/checkpoint-STEP; keeps the newest `keep`.

    The state is written into `checkpoint-STEP.partial` and renamed once every process has
    written its part and the marker file CHECKPOINT_COMPLETE is in: a run stopped while
    saving leaves a .partial folder, never a checkpoint that `--resume latest` would pick.
    """
    checkpoints = Path(output_dir) / CHECKPOINT_DIR
    folder = checkpoints / f"checkpoint-{step}"
    partial = checkpoints / f"checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run stopped while saving
        checkpoints.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / CHECKPOINT_COMPLETE).write_text(json.dumps({"step": step}) + "\n", encoding="utf-8")
        if folder.exists():  # the same step saved before (a rerun): replace it only now
            shutil.rmtree(folder)
        os.replace(partial, folder)
        if keep:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def is_complete_checkpoint(folder: Path) -> bool:
    return (Path(folder) / CHECKPOINT_COMPLETE).is_file()


def resolve_checkpoint(value: str, output_dir: Path) -> Path | None:
    """The checkpoint folder `--resume VALUE` names: the newest complete one for "latest"
    (None when there is none yet), else the folder given."""
    if value == "latest":
        found = list_checkpoints(output_dir)
        complete = [p for p in found if is_complete_checkpoint(p)]
        newer = found[found.index(complete[-1]) + 1:] if complete else found
        for skipped in newer:
            logger.warning("skipping %s: it has no %s, so it was not completely written (a run stopped while "
                           "saving, or an older version); pass the folder to --resume to use it anyway",
                           skipped, CHECKPOINT_COMPLETE)
        if not complete:
            logger.info("no complete checkpoint in %s: starting from the beginning", output_dir / CHECKPOINT_DIR)
            return None
        return complete[-1]
    path = Path(value)
    if not path.is_dir():
        raise InputError(f"checkpoint {value} does not exist; give a checkpoint folder or 'latest'")
    return path
