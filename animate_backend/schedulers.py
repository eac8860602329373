"""The sampling schedulers a job can choose (its `scheduler` setting), built from the model's own.

"ddim" is the model's own scheduler (docs/model.md, "Sampling", for converted Moore weights);
the others reuse its noise schedule (betas, prediction type, zero-SNR rescaling), so every
choice samples the same model, only with another solver.
"""

from __future__ import annotations

from typing import Any

from animate_backend.errors import InputError


def _ddim(default: Any):
    from diffusers import DDIMScheduler

    return default if isinstance(default, DDIMScheduler) else DDIMScheduler.from_config(default.config)


def _dpmsolver(default: Any):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(default.config, algorithm_type="dpmsolver++")


def _euler(default: Any):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(default.config)


# name -> factory taking the model's own scheduler. No LCM: it needs weights distilled for it,
# which no released Animate Anyone model has.
SCHEDULER_FACTORIES = {"ddim": _ddim, "dpmsolver++": _dpmsolver, "euler": _euler}


def make_scheduler(name: str, default: Any):
    """The scheduler called `name` built from `default`, the model's own scheduler."""
    factory = SCHEDULER_FACTORIES.get(name)
    if factory is None:
        raise InputError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULER_FACTORIES)}")
    return factory(default)
