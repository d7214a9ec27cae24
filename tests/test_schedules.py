"""The lr schedules of latentlm.schedules, alone and as LitGPT's LambdaLR."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from test_attention import VOCAB, gpt_config
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from latentlm.config import compose_train
from latentlm.lit import LitGPT
from latentlm.schedules import constant, warmup_cosine

# (total_steps, warmup_steps, min_lr_ratio); in the last two the warmup is clamped below total_steps
CASES = [(30, 5, 0.1), (30, 0, 0.1), (12, 3, 0.0), (2, 0, 0.5), (4, 10, 0.1), (1, 5, 0.1)]


def torch_warmup_cosine(total: int, warmup: int, min_lr_ratio: float) -> list[float]:
    """The multipliers of torch's LinearLR then CosineAnnealingLR (latentlm's schedule before it was a function)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    warmup = min(warmup, max(total - 1, 0))
    cosine = CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=min_lr_ratio)
    scheduler = cosine if warmup == 0 else SequentialLR(
        optimizer, [LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup), cosine], [warmup]
    )
    lrs = []
    for _ in range(total + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("total, warmup, min_lr_ratio", CASES)
def test_warmup_cosine_is_torchs_linear_then_cosine(total, warmup, min_lr_ratio):
    ours = [warmup_cosine(s, warmup_steps=warmup, total_steps=total, min_lr_ratio=min_lr_ratio)
            for s in range(total + 1)]
    assert ours == pytest.approx(torch_warmup_cosine(total, warmup, min_lr_ratio), rel=0, abs=1e-12)


def test_warmup_cosine_at_a_few_steps():
    def lr(step):
        return warmup_cosine(step, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)

    assert [lr(s) for s in range(5)] == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0])  # from 1/warmup up to 1
    assert lr(8) == pytest.approx(0.55)  # half way through the cosine: half way down
    assert lr(12) == pytest.approx(0.1)


def test_constant_warms_up_then_holds():
    lrs = [constant(s, warmup_steps=4, total_steps=12) for s in range(13)]
    assert lrs[:4] == pytest.approx([0.25, 0.4375, 0.625, 0.8125])
    assert lrs[4:] == [1.0] * 9
    assert constant(0, warmup_steps=0, total_steps=12) == 1.0


@pytest.mark.parametrize("scheduler", ["warmup_cosine", "constant"])
def test_litgpt_steps_the_configured_schedule(scheduler):
    """The smoke run's lr at every step: lr x the schedule, with trainer.max_steps as its total_steps."""
    cfg = compose_train(["experiment=smoke", f"scheduler={scheduler}"])
    optimizer, schedule = (OmegaConf.to_container(cfg[key], resolve=True) for key in ("optimizer", "scheduler"))
    module = LitGPT(gpt_config("mha"), VOCAB, optimizer, schedule)
    module.trainer = L.Trainer(max_steps=cfg.trainer.max_steps, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False)
    optimizer = module.configure_optimizers()
    optimizer, lr_scheduler = optimizer["optimizer"], optimizer["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(cfg.trainer.max_steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"] / cfg.optimizer.lr)
        optimizer.step()
        lr_scheduler.step()
    expected = (torch_warmup_cosine(30, 5, 0.1) if scheduler == "warmup_cosine"
                else [constant(s, warmup_steps=5, total_steps=30) for s in range(31)])
    assert lrs == pytest.approx(expected, rel=0, abs=1e-12)
