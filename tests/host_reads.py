"""A callback for tests that counts, step by step, the reads of tensor values into Python (.item(), float(), bool(),
.tolist()) made outside torch: on a GPU each one waits for every queued kernel, so one a step leaves the GPU idle
while the host prepares the next step. torch's own reads (the CPU optimizer reads its step counter) are not counted:
on a GPU the fused optimizer makes none."""

import json
import sys
from collections import Counter
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

READS = ("item", "tolist", "__bool__", "__float__", "__int__")
TORCH = str(Path(torch.__file__).parent)


class HostReads(Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.step = 0
        self.reads: Counter[int] = Counter()  # training step -> reads while it was the current step
        self.originals = {name: getattr(torch.Tensor, name) for name in READS}

    def on_train_start(self, trainer, pl_module) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            if not sys._getframe(1).f_code.co_filename.startswith(TORCH):
                self.reads[self.step] += 1
            return original(tensor, *args, **kwargs)

        return read

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = trainer.global_step + 1  # the step this batch makes (global_step counts finished ones)

    def on_train_end(self, trainer, pl_module) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)
        self.out.write_text(json.dumps(self.reads))
