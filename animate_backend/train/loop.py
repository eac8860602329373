"""What every training loop shares: the accelerator, the optimizer, the batches from where a run
stands, the RNG of each micro-step, and the log-and-checkpoint tail of each update.

Used by the stage 1 and 2 loop (trainer.py) and the VAE's (vae.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration
from torch import nn

from animate_backend.errors import InputError
from animate_backend.train.checkpoints import TrainingProgress, save_checkpoint
from animate_backend.train.config import TrainConfig

logger = logging.getLogger(__name__)


def resumable_batches(dataset, dataloader, progress: TrainingProgress, max_steps: int) -> Iterator[Any]:
    """The batches of every training loop, from where `progress` stands until max_steps updates.

    The sampler's order and the dataset's crops and frames both follow the epoch (accelerate's
    set_epoch reaches the dataset only for some sampler layouts); a resumed epoch skips the
    batches it had done. The caller counts progress.micro_step, batch_in_epoch and global_step;
    this counts epochs, and stops once global_step reaches max_steps.
    """
    while progress.global_step < max_steps:
        dataset.set_epoch(progress.epoch)
        dataloader.set_epoch(progress.epoch)
        loader = dataloader
        if progress.batch_in_epoch:
            loader = skip_first_batches(dataloader, progress.batch_in_epoch)
            loader.set_epoch(progress.epoch)
        for batch in loader:
            yield batch
            if progress.global_step >= max_steps:
                return
        progress.epoch += 1
        progress.batch_in_epoch = 0


def log_and_checkpoint(accelerator, config: TrainConfig, output_dir: Path, step: int, max_steps: int,
                       logs: dict[str, float]) -> bool:
    """After optimizer update `step`: log every logging_steps (and the last), checkpoint every
    checkpointing_steps. True when the logs were written."""
    logged = step % config.logging_steps == 0 or step == max_steps
    if logged:
        accelerator.log(logs, step=step)
    if config.checkpointing_steps and step % config.checkpointing_steps == 0:
        save_checkpoint(accelerator, output_dir, step, config.checkpoints_total_limit)
    return logged


def micro_step_generator(seed: int, process_index: int, micro_step: int) -> torch.Generator:
    """The RNG of one micro-step: depends on nothing else, so resuming needs no RNG state."""
    state = np.random.SeedSequence([seed, process_index, micro_step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))



def make_optimizer(params: list[nn.Parameter], config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    o = config.optim
    if o.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise InputError("optim.use_8bit_adam needs bitsandbytes: `pip install bitsandbytes` "
                             "(CUDA only), or set use_8bit_adam: false") from exc
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(params, lr=lr, betas=(o.adam_beta1, o.adam_beta2),
                           weight_decay=o.adam_weight_decay, eps=o.adam_epsilon)


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The Accelerator of a run; on the CPU it also sets torch's thread count (config.cpu_threads)."""
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
        mixed_precision=config.optim.mixed_precision,
        log_with=None if config.report_to in ("", "none") else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        # Stage 1: the last transformer block of the ReferenceNet feeds nothing that is used.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.stage == 1)],
    )
    if accelerator.device.type == "cpu" and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
        logger.info("training on the CPU with %d torch thread(s) per process (cpu_threads)", config.cpu_threads)
    return accelerator
