"""The LightningModule: label-smoothed training loss, plain-CE validation, the optimizer and lr schedule of its config.

A checkpoint rebuilds its module on its own: the hyperparameters (the GPT's config, the optimizer and schedule
settings, the tokenizer) are saved in it, so `LitGPT.load_from_checkpoint(path)` needs no run dir.
"""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import SumMetric

from latentlm.config import ConfigError
from latentlm.model import GPT


class LitGPT(L.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        vocab_size: int,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any],
        label_smoothing: float = 0.1,
        tokenizer: dict[str, Any] | None = None,
        compile_mode: str | None = None,
        compile_validation: bool = False,
        fused_loss: bool = False,
    ):
        """Built from the train config's `module` node. `model`: a model config (configs/model/), GPT's keyword
        arguments but vocab_size. `optimizer`: a `_partial_` torch.optim config (configs/optimizer/).
        `scheduler`: a `_partial_` schedule config (configs/scheduler/, latentlm.schedules) without total_steps,
        which is trainer.max_steps. `tokenizer`: the run's tokenizer (latentlm.data.tokenizer.run_tokenizer), kept
        so a checkpoint decodes text on its own. `compile_mode` is how this process trains, not part of the model:
        it is not saved, and a loaded module runs eagerly. So are the other two: `compile_validation` compiles
        validation too (by default it runs eagerly: an evaluation graph to compile, and to recompile for a last,
        smaller batch, costs more than it saves on a validation split this small); `fused_loss` makes the training
        loss, on CUDA, Liger Kernel's fused linear cross-entropy, which never holds the logits whole."""
        super().__init__()
        # train.py logs the whole config; how this process compiles is not part of the model
        self.save_hyperparameters(ignore=["compile_mode", "compile_validation", "fused_loss"], logger=False)
        model = dict(model)
        target = model.pop("_target_", "latentlm.model.GPT")  # checkpoints from before `module` have none
        model.pop("_recursive_", None)  # GPT builds its attention layers itself
        if get_class(target) is not GPT:
            raise ConfigError(f"model._target_={target}: LitGPT builds latentlm.model.GPT only")
        self.net = GPT(vocab_size=vocab_size, **model)
        self.label_smoothing = label_smoothing
        self.fused_loss = fused_loss
        # Sums over every validation token, so val/loss is the token-weighted mean over the whole split.
        self.val_loss_sum, self.val_correct, self.val_tokens = SumMetric(), SumMetric(), SumMetric()
        self.val_history: list[dict[str, float]] = []  # one entry per validation: step, val_loss, val_acc
        if compile_mode is not None:
            # Compile the loss with the model, so the logits' cast, log-softmax and smoothing fuse into few kernels.
            # Compiling bound methods (not the module) keeps parameter names, and checkpoints, those of the plain
            # model. torch.compile is lazy: nothing is compiled before the first step, on whatever device.
            self._train_loss = torch.compile(self._train_loss, mode=compile_mode)
            if fused_loss:
                # The fused loss compiles the model alone. Liger's loss is an autograd Function that runs eagerly
                # (it reads the count of targets with .item(), a host sync no CUDA graph can hold, and loops over
                # chunks of tokens in Python), so it stays outside the compiled region.
                self._hidden = torch.compile(self._hidden, mode=compile_mode)
            if compile_validation:
                self._val_metrics = torch.compile(self._val_metrics, mode=compile_mode)

    def _logits(self, x: Tensor) -> Tensor:
        """Logits over the real vocab (B * T, V) in fp32 for the losses."""
        logits = self.net(x)
        vocab = self.net.vocab_size
        logits = logits if vocab == logits.size(-1) else logits[..., :vocab]  # drop padding rows of the head
        return logits.flatten(0, 1).float()

    def _train_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self._logits(x), y.flatten(), label_smoothing=self.label_smoothing)

    def _hidden(self, x: Tensor) -> Tensor:
        """The final hidden states (B * T, d_model), the input of the fused loss."""
        return self.net.hidden(x).flatten(0, 1)

    def _fused_train_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """_train_loss without the logits: Liger Kernel's Triton kernels compute the head's matmul, the smoothed
        cross-entropy and its gradients chunk by chunk of tokens."""
        # Imported here: Liger brings in Triton (and transformers, where installed), start-up time that a run
        # without the switch does not need.
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        # The head's padding rows are no classes: sliced off, they stay out of the softmax and the smoothing.
        head = self.net.lm_head.weight[: self.net.vocab_size]
        return liger_fused_linear_cross_entropy(
            self._hidden(x), head, y.flatten(), label_smoothing=self.label_smoothing
        )

    def _val_metrics(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Summed plain cross-entropy (comparable across label smoothing) and count of top-1 next-token hits."""
        logits = self._logits(x)
        return F.cross_entropy(logits, y.flatten(), reduction="sum"), (logits.argmax(-1) == y.flatten()).sum()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        fused = self.fused_loss and self.device.type == "cuda"  # Liger's kernels are Triton's: CUDA only
        loss = self._fused_train_loss(*batch) if fused else self._train_loss(*batch)
        # The mean over the ranks: the global batch's loss. Lightning turns the progress bar's metrics into numbers
        # after every step, a host-GPU sync that idles the GPU while the host prepares the next step (on an H200
        # the Trainer ran a 30m step 6% slower than a plain loop): the loss goes to the bar only where there is one.
        bar = self._trainer is not None and self._trainer.progress_bar_callback is not None
        self.log("train/loss", loss, prog_bar=bar, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss_sum, correct = self._val_metrics(*batch)
        self.val_loss_sum.update(loss_sum)
        self.val_correct.update(correct)
        self.val_tokens.update(batch[1].numel())

    def on_validation_epoch_end(self) -> None:
        tokens = self.val_tokens.compute()
        loss, acc = self.val_loss_sum.compute() / tokens, self.val_correct.compute() / tokens
        # The sums are over every rank's tokens, so every rank has these values: sync_dist only tells Lightning so.
        self.log_dict({"val/loss": loss, "val/ppl": loss.exp(), "val/acc": acc}, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_history.append({"step": self.global_step, "val_loss": loss.item(), "val_acc": acc.item(),
                                     "val_tokens": int(tokens.item())})  # every rank's: each token counted once
        for metric in (self.val_loss_sum, self.val_correct, self.val_tokens):
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["val_history"] = self.val_history
        checkpoint["max_steps"] = self.trainer.max_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_history = checkpoint.get("val_history", [])
        if self._trainer is None:  # LitGPT.load_from_checkpoint: the model alone, no run to continue
            return
        # The restored schedule was built for the checkpoint's budget: a longer one would restart the cosine
        # (the lr climbs back up), which is a new run, not a resumed one.
        saved = checkpoint.get("max_steps", self.trainer.max_steps)
        if saved != self.trainer.max_steps:
            raise ConfigError(
                f"trainer.max_steps={self.trainer.max_steps} differs from the resumed run's {saved}; resuming "
                f"continues its schedule, so keep trainer.max_steps={saved} (train longer in a new run)"
            )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's AMP plugin refuses to clip for fused optimizers, a guard for fp16 loss scaling. bf16-mixed
        # and fp32 have no loss scaler, so the gradients are true gradients: clip them directly. Under FSDP each
        # rank holds a shard of them: the sharded root's clip_grad_norm_ takes the norm over every shard.
        if gradient_clip_val and self.trainer.precision not in ("16-mixed", "16"):
            if isinstance(self.trainer.model, FullyShardedDataParallel):
                self.trainer.model.clip_grad_norm_(gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), gradient_clip_val, foreach=True)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        optimizer, scheduler = self.optimizer_and_schedule(self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_and_schedule(self, total_steps: int) -> tuple[Optimizer, LambdaLR]:
        """The configured optimizer (no weight decay on `no_weight_decay`'s parameters; fused on CUDA) and its lr
        schedule over `total_steps`; also what scripts/bench_plain_loop.py steps without the Trainer."""
        plain_names = no_weight_decay(self.net)
        decay, plain = [], []
        for name, p in self.net.named_parameters():
            (plain if name in plain_names else decay).append(p)
        optimizer = instantiate(self.hparams.optimizer)(
            [{"params": decay}, {"params": plain, "weight_decay": 0.0}], fused=self.device.type == "cuda"
        )
        # LambdaLR sets lr = the optimizer's lr x schedule(step) from the step alone, so a resumed run (which
        # restores the step) continues the same curve.
        return optimizer, LambdaLR(optimizer, instantiate(self.hparams.scheduler, total_steps=total_steps))


def no_weight_decay(net: nn.Module) -> set[str]:
    """Names of the parameters AdamW must not decay: biases, embeddings (the head is tied to wte) and norm gains.

    Decided by what a parameter is, not by its shape: latent attention's per-block RMSNorm gains
    (`kv_norm_weight`, one row per block) are 2-D but are norm gains like every LayerNorm weight.
    """
    plain = set()
    for module_name, module in net.named_modules():
        for name, _ in module.named_parameters(prefix=module_name, recurse=False):
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.RMSNorm)) or leaf == "bias" or "norm" in leaf:
                plain.add(name)
    return plain
