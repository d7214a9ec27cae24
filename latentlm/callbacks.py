"""Training callbacks: throughput (tokens/s, MFU), plain progress lines for logs that are not a terminal, profiling,
and the phase timings of a run (latentlm.timings)."""

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

log = logging.getLogger(__name__)

# Dense bf16 peak per chip, by the vendor's datasheet (Lightning's own table has been wrong for the H200).
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The dense bf16 peak of a known GPU when training in bf16, else None (no MFU is reported)."""
    if device.type != "cuda" or not precision.startswith("bf16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def train_flops_per_token(build_net: Callable[[], torch.nn.Module], seq_len: int) -> float:
    """Forward + backward FLOPs per token of one sequence, counted on a meta-device copy (no memory, no time)."""
    with torch.device("meta"):
        net = build_net()
        x = torch.zeros(1, seq_len, dtype=torch.long)
    return measure_flops(net, lambda: net(x), lambda y: y.float().sum()) / seq_len


class Throughput(Callback):
    """Logs perf/tokens_per_s and perf/mfu over windows of `window` steps.

    The window is timed on the host at its ends only, with no synchronisation inside the training step: the
    host can run ahead of the GPU by the depth of the launch queue, a small error over a long window. Tokens count
    every rank (each rank's batch is as large, and the ranks step together), and the peak every device.
    """

    def __init__(self, window: int = 50, warmup_steps: int = 1):
        self.window, self.warmup_steps = window, warmup_steps
        self.flops_per_token: float | None = None
        self.peak: float | None = None
        self._t0: float | None = None
        self._tokens = 0  # since _t0
        self._timed_tokens, self._timed_s = 0, 0.0  # every timed stretch, for the run's mean rate

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peak = peak_flops(pl_module.device, str(trainer.precision))
        self.peak = peak * trainer.world_size if peak else None  # of every device together, as the tokens count
        self._t0, self._tokens = None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += batch[0].numel() * trainer.world_size
        step = trainer.global_step
        if step < self.warmup_steps:  # compilation and warm-up stay out of the numbers
            return
        if self._t0 is None:  # start timing at the end of this step
            self._t0, self._tokens = time.perf_counter(), 0
            return
        if step % self.window:
            return
        rate = self._close_stretch()
        metrics = {"perf/tokens_per_s": rate}
        if self.peak and self.flops_per_token:
            metrics["perf/mfu"] = rate * self.flops_per_token / self.peak
        pl_module.log_dict(metrics)

    def _close_stretch(self) -> float:
        now = time.perf_counter()
        rate = self._tokens / (now - self._t0)
        self._timed_tokens += self._tokens
        self._timed_s += now - self._t0
        self._t0, self._tokens = now, 0
        return rate

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._t0 is not None and self._tokens:
            self._close_stretch()
        self._t0 = None  # validation time is not training throughput

    def on_train_end(self, trainer, pl_module) -> None:
        self.on_validation_start(trainer, pl_module)

    @property
    def mfu(self) -> float | None:
        rate = self.tokens_per_s
        return rate * self.flops_per_token / self.peak if rate and self.peak and self.flops_per_token else None

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens over seconds of every timed stretch of the run (first step after each validation excluded)."""
        return self._timed_tokens / self._timed_s if self._timed_s else None


class Diverged(RuntimeError):
    """Training produced a non-finite loss; `step` is where it was seen."""

    def __init__(self, step: int, what: str):
        super().__init__(f"{what} is not finite at step {step}; the last checkpoint is from before it")
        self.step = step


class StopOnNonFinite(Callback):
    """Stops training with `Diverged` when the training loss is not finite, checked every `every` steps (one host
    sync each, where the loss is logged anyway), and when a validation loss is not finite, before any checkpoint
    of that validation is written (Lightning runs checkpoint callbacks last). Both are the logged losses, the same
    on every rank (their mean over the ranks), so that on several devices every rank stops at the same step."""

    def __init__(self, every: int):
        self.every = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0 and not torch.isfinite(trainer.callback_metrics["train/loss"]):
            raise Diverged(trainer.global_step, "the training loss")

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and loss is not None and not torch.isfinite(loss).item():
            raise Diverged(trainer.global_step, "the validation loss")


class PlainProgress(Callback):
    """One log line every `every` steps and after each validation, for runs whose output is not a terminal."""

    def __init__(self, every: int = 50):
        self.every = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            metrics = trainer.callback_metrics
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            rate = metrics.get("perf/tokens_per_s")
            log.info(
                "step %d/%d  train/loss %.4f  lr %.2e%s",
                step,
                trainer.max_steps,
                float(metrics["train/loss"]),  # as logged: on several devices, the mean over the ranks
                lr,
                f"  tokens/s {float(rate):,.0f}" if rate is not None else "",
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        log.info(
            "step %d  val/loss %.4f  val/ppl %.2f  val/acc %.4f",
            trainer.global_step,
            float(m["val/loss"]),
            float(m["val/ppl"]),
            float(m["val/acc"]),
        )


class ProfileSteps(Callback):
    """Profiles `steps` training steps from step `start` and logs where the time goes: wall time per step, then
    the ops that take the most time, by GPU time (the kernels, and the GPU's busy time per step) where there is a
    GPU, else by self CPU time. Add it to any run with `+callbacks.profile._target_=latentlm.callbacks.ProfileSteps`
    (and `+callbacks.profile.start=5` for a run shorter than 35 steps)."""

    def __init__(self, start: int = 30, steps: int = 5, top: int = 15):
        self.start, self.steps, self.top = start, steps, top
        self._profiler = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.global_step <= self.start <= trainer.max_steps - self.steps:
            log.warning(
                "profile: steps %d-%d lie outside this run (steps %d-%d): nothing will be profiled; "
                "set +callbacks.profile.start=<step> (and .steps) inside it",
                self.start, self.start + self.steps, trainer.global_step, trainer.max_steps,
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and self._profiler is None:
            from torch.profiler import ProfilerActivity, profile

            # GPU kernels only where there is a GPU: recording every CPU op would slow the host and the step.
            activities = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]
            if activities == [ProfilerActivity.CPU]:
                # Kineto prints "USDT: ... profiler_start" and "profiler_stop" at its top log level (5, above its
                # errors). Only on a CPU are its errors of no use (on a GPU they say why no kernel was recorded).
                os.environ.setdefault("KINETO_LOG_LEVEL", "6")
            self._profiler = profile(activities=activities)
            self._profiler.__enter__()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._profiler is None or trainer.global_step != self.start + self.steps:
            return
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - self._t0) / self.steps
        self._profiler.__exit__(None, None, None)
        measure = "device_time_total" if cuda else "self_cpu_time_total"
        ops = [  # on a GPU, not the GPU-timeline spans of annotations such as Optimizer.step, which overlap kernels
            e for e in self._profiler.key_averages()
            if getattr(e, measure) > 0
            and (not cuda or (e.device_type.name == "CUDA" and not getattr(e, "is_user_annotation", False)))
        ]
        if cuda:
            busy = sum(e.device_time_total for e in ops) / 1e3 / self.steps
            log.info("profile: %.2f ms wall per step, GPU busy %.2f ms per step; top kernels by GPU time:",
                     wall * 1e3, busy)
        else:
            log.info("profile: %.2f ms wall per step; top ops by self CPU time:", wall * 1e3)
        for e in sorted(ops, key=lambda e: getattr(e, measure), reverse=True)[: self.top]:
            log.info("  %7.3f ms/step %6.1f calls/step  %s", getattr(e, measure) / 1e3 / self.steps,
                     e.count / self.steps, e.key[:100])
        self._profiler = None
        self.start = -1  # once


class TimedCheckpointIO(_WrappingCheckpointIO):
    """Adds up the seconds the trainer waits on checkpoint writes (wrap an AsyncCheckpointIO to time only the
    hand-off to its thread)."""

    def __init__(self, checkpoint_io: CheckpointIO | None = None):
        super().__init__(checkpoint_io)
        self.seconds = 0.0

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        self.checkpoint_io.save_checkpoint(*args, **kwargs)
        self.seconds += time.perf_counter() - started

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.checkpoint_io.load_checkpoint(*args, **kwargs)

    def remove_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self.checkpoint_io.remove_checkpoint(*args, **kwargs)

    def teardown(self) -> None:  # an AsyncCheckpointIO inside finishes its writes here
        self.checkpoint_io.teardown()


class PhaseTimes(Callback):
    """Times Trainer.fit's phases (see latentlm.timings); `checkpoint_io` supplies the writes.

    On a GPU the later steps are timed by CUDA events around each step (the GPU's time from a step's first kernel to
    its last, with no host synchronisation), since the host runs ahead and would otherwise book the GPU's work to
    wherever it next waits; the first step and each validation end with one synchronisation, so that their host
    time holds their GPU work. On a CPU every phase is host time.
    """

    def __init__(self, checkpoint_io: TimedCheckpointIO):
        self.checkpoint_io = checkpoint_io
        self.seconds = dict.fromkeys(("fit_start", "first_step", "steps", "validation", "fit"), 0.0)
        self._fit_t0 = self._t0 = 0.0
        self._first_done = False
        self._cuda = torch.cuda.is_available()
        self._step_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()
        if not self._first_done:
            self.seconds["fit_start"] = self._t0 - self._fit_t0
        elif self._cuda:
            self._step_events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self._step_events[-1][0].record()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning runs checkpoint callbacks after every other callback: a write after this step is not in it
        if not self._first_done:
            self._sync()
            self.seconds["first_step"] = time.perf_counter() - self._t0
            self._first_done = True
        elif self._cuda:
            self._step_events[-1][1].record()
        else:
            self.seconds["steps"] += time.perf_counter() - self._t0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._sync()  # the steps before it are not validation
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._sync()
            self.seconds["validation"] += time.perf_counter() - self._t0

    def on_fit_end(self, trainer, pl_module) -> None:
        self._sync()
        self.seconds["fit"] = time.perf_counter() - self._fit_t0
        self.seconds["steps"] += sum(start.elapsed_time(end) for start, end in self._step_events) / 1e3
        self._step_events.clear()

    def phases(self) -> dict[str, float]:
        """fit_start, first_step, steps, validation, checkpoints and between_steps: together the whole of fit."""
        s = self.seconds
        measured = {k: s[k] for k in ("fit_start", "first_step", "steps", "validation")}
        measured["checkpoints"] = self.checkpoint_io.seconds
        measured["between_steps"] = max(s["fit"] - sum(measured.values()), 0.0)
        return measured
