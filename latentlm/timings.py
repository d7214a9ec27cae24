"""Where a run's wall time goes: the `timings` block of summary.json, printed at the end of every run.

    startup         process start to train(): Python, imports, Hydra's config (the first job of a process only)
    setup           train() to Trainer.fit's start: config check, data, model build, FLOP count, trainer, loggers
    fit_start       fit's start to the first step: Lightning's setup, optimizer, data loader start
    first_step      the first training step: compilation (and CUDA-graph capture) plus one step
    steps           every later training step: its GPU time on a GPU (CUDA events), its host time on a CPU
    validation      every validation run inside fit (the first one compiles the evaluation graph)
    checkpoints     checkpoint writes, as far as they stall training (a write in a background thread does not)
    between_steps   the rest of fit: loading batches, logging, Lightning's loop, the GPU idle between steps
    after_fit       the validation after fit where the last one was not at the end, the judge, W&B's finish
    total           train() start to the summary (plus startup for the first job)

Free of torch and Lightning, so that train.py imports it before the config is checked; the Lightning side is
latentlm.callbacks.PhaseTimes and TimedCheckpointIO.
"""

import os

PHASES = ("startup", "setup", "fit_start", "first_step", "steps", "validation", "checkpoints", "between_steps",
          "after_fit")


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def describe(timings: dict[str, float]) -> str:
    """One line: the total and each phase that took time, e.g. 'total 75.1 s = startup 4.2 + setup 6.0 + ...'."""
    parts = [f"{k} {timings[k]:.1f}" for k in PHASES if timings.get(k)]
    return f"total {timings['total']:.1f} s = " + " + ".join(parts)
