"""Learning-rate schedules: the multiplier of the optimizer's lr at each optimizer step, for torch's LambdaLR.

A schedule is a function `schedule(step, *, total_steps, ...) -> float`; a configs/scheduler/ file names it with
`_target_` and `_partial_: true` and sets the rest of its keywords, and LitGPT passes total_steps
(trainer.max_steps) when it builds the optimizer. A new schedule is one function here and one YAML file.

The warmup is clamped below total_steps, so a run shorter than its warmup still ends its warmup (and decays).
"""

import math


def _warmup(step: int, warmup_steps: int) -> float:
    """Linear warmup from 1/warmup_steps at step 0 to 1 at step warmup_steps."""
    return 1.0 / warmup_steps + (1.0 - 1.0 / warmup_steps) * step / warmup_steps


def _clamped(warmup_steps: int, total_steps: int) -> int:
    return min(warmup_steps, max(total_steps - 1, 0))


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup, then a cosine from 1 at warmup_steps down to min_lr_ratio at total_steps."""
    warmup = _clamped(warmup_steps, total_steps)
    if step < warmup:
        return _warmup(step, warmup)
    progress = (step - warmup) / max(total_steps - warmup, 1)
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress)) / 2


def constant(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup, then the optimizer's lr unchanged to the end."""
    warmup = _clamped(warmup_steps, total_steps)
    return _warmup(step, warmup) if step < warmup else 1.0
