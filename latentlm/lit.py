"""The LightningModule: label-smoothed training loss, plain-CE validation, AdamW with warmup + cosine."""

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torchmetrics import MeanMetric

from latentlm.model import GPT


class LitGPT(L.LightningModule):
    def __init__(
        self,
        net: GPT,
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup_steps: int,
        min_lr_ratio: float,
        label_smoothing: float = 0.1,
        compile: bool = False,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.label_smoothing = label_smoothing
        self.compile_net = compile
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()

    def configure_model(self) -> None:
        if self.compile_net:
            self.net.compile()  # in place: parameter names (and checkpoints) stay those of the plain model

    def _logits(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        vocab = self.net.vocab_size
        return logits if vocab == logits.size(-1) else logits[..., :vocab]  # drop padding rows of the head

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self._logits(x)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), y.flatten(), label_smoothing=self.label_smoothing
        )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self._logits(x).flatten(0, 1).float()
        self.val_loss.update(F.cross_entropy(logits, y.flatten()))  # plain CE: comparable across smoothing
        self.val_acc.update((logits.argmax(-1) == y.flatten()).float().mean())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log_dict(
            {"val/loss": loss, "val/ppl": loss.exp(), "val/acc": self.val_acc.compute()}, prog_bar=True
        )
        self.val_loss.reset()
        self.val_acc.reset()

    def configure_optimizers(self):
        # No weight decay on biases, norms and embeddings (1-D tensors and the tied embedding matrix).
        no_decay = {id(self.net.wte.weight)} | (
            {id(self.net.wpe.weight)} if self.net.wpe is not None else set()
        )
        decay, plain = [], []
        for p in self.net.parameters():
            (plain if p.dim() < 2 or id(p) in no_decay else decay).append(p)
        optimizer = self.optimizer_factory(
            [{"params": decay}, {"params": plain, "weight_decay": 0.0}], fused=self.device.type == "cuda"
        )
        total = self.trainer.max_steps
        warmup = min(self.warmup_steps, max(total - 1, 0))
        cosine = CosineAnnealingLR(
            optimizer, T_max=max(total - warmup, 1), eta_min=optimizer.defaults["lr"] * self.min_lr_ratio
        )
        scheduler = (
            cosine
            if warmup == 0
            else SequentialLR(
                optimizer,
                [LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup), cosine],
                [warmup],
            )
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
