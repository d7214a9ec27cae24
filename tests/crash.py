"""A callback that kills a training run at a given step, as a crash or a pre-emption would (for resume tests)."""

from lightning.pytorch.callbacks import Callback


class CrashAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise SystemExit(f"crashed at step {self.step}")
