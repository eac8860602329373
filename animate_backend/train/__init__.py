"""Training Animate Anyone's two stages (paper section 3.3) on accelerate.

    accelerate launch -m animate_backend.train stage1 --config stage1.yaml
    accelerate launch -m animate_backend.train stage2 --config stage2.yaml

(`python -m animate_backend.train ...` runs the same on one process.) Modules: config
(YAML settings), data (the clip dataset), models (building each stage's models), modules
(the trained models as one torch module), losses (noise, targets, min-SNR), trainer
(the loop, checkpoints, validation, export).
"""

from animate_backend.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "train"]


def train(config: TrainConfig):
    """Run the stage `config.stage`; returns the saved pipeline folder (see trainer.train)."""
    from animate_backend.train.trainer import train as run

    return run(config)
