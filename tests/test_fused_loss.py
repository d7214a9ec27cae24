"""fused_loss=true: Liger Kernel's fused linear cross-entropy equals the plain training loss, on a CPU through
Triton's interpreter and on a GPU; without CUDA the switch leaves the plain loss."""

import os
import subprocess
import sys

import pytest
import torch
import triton
from conftest import REPO, gpu_step_losses
from test_attention import gpt_config
from test_equal_treatment import ADAMW, SCHEDULE

from latentlm.lit import LitGPT

VOCAB = 100  # padded to 128: the head has 28 rows that are no token


def check_fused_loss_matches_plain(device: str) -> None:
    """The fused loss, its gradient w.r.t. the final hidden states and w.r.t. the head's weight equal the plain
    loss's, with label smoothing. The padding rows of the head are given weights 50x the others', so that any of
    them inside the softmax or the smoothing would move the loss far off."""
    torch.manual_seed(0)
    module = LitGPT(gpt_config("mha"), VOCAB, ADAMW, SCHEDULE, label_smoothing=0.1, fused_loss=True).to(device)
    net = module.net
    assert net.padded_vocab_size == 128
    with torch.no_grad():
        net.lm_head.weight[VOCAB:].normal_(0.0, 1.0)
    hidden = []

    def keep_grad(_module, _args, out: torch.Tensor) -> None:
        out.retain_grad()
        hidden.append(out)

    net.ln_f.register_forward_hook(keep_grad)
    x, y = (torch.randint(0, VOCAB, (3, 20), device=device) for _ in range(2))
    results = []
    for loss_fn in (module._train_loss, module._fused_train_loss):
        net.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        results.append((loss.detach(), hidden[-1].grad, net.lm_head.weight.grad.clone()))
    (plain, plain_hidden, plain_head), (fused, fused_hidden, fused_head) = results
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_hidden, plain_hidden, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fused_head, plain_head, rtol=1e-4, atol=1e-7)
    assert not fused_head[VOCAB:].any()  # no gradient into the padding rows


@pytest.mark.skipif(tuple(map(int, triton.__version__.split(".")[:2])) < (3, 8),
                    reason="Triton's interpreter before 3.8 fails on numpy 2")
def test_fused_loss_matches_plain_in_interpreter():
    code = "from test_fused_loss import check_fused_loss_matches_plain; check_fused_loss_matches_plain('cpu')"
    # Triton reads TRITON_INTERPRET when it is imported: a process of its own
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.gpu
def test_fused_loss_matches_plain_on_gpu():
    check_fused_loss_matches_plain("cuda")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # a step called without a Trainer
def test_fused_loss_off_cuda_trains_with_the_plain_loss(monkeypatch):
    torch.manual_seed(0)
    module = LitGPT(gpt_config("mha"), VOCAB, ADAMW, SCHEDULE, fused_loss=True)
    monkeypatch.setattr(module, "_fused_train_loss", lambda x, y: pytest.fail("the fused loss ran on a CPU"))
    x, y = (torch.randint(0, VOCAB, (3, 20)) for _ in range(2))
    torch.testing.assert_close(module.training_step((x, y), 0), module._train_loss(x, y), rtol=0, atol=0)


def test_compiled_fused_loss_compiles_the_model_and_leaves_liger_eager():
    plain = LitGPT(gpt_config("mha"), VOCAB, ADAMW, SCHEDULE, compile_mode="default")
    fused = LitGPT(gpt_config("mha"), VOCAB, ADAMW, SCHEDULE, compile_mode="default", fused_loss=True)
    compiled = type(plain._train_loss)  # what torch.compile returns for a bound method
    assert type(fused._hidden) is compiled and type(fused._train_loss) is compiled  # the latter for a CPU
    assert fused._fused_train_loss.__func__ is LitGPT._fused_train_loss  # eager, calling the compiled _hidden
    assert plain._hidden.__func__ is LitGPT._hidden  # switch off: the compiled loss as before, nothing more
    assert "fused_loss" not in fused.hparams  # how this process trains, not the model


@pytest.mark.gpu
def test_fused_loss_trains_as_the_plain_loss_on_gpu(data_root, tmp_path):
    """The whole path on a GPU: compile=auto (the model in CUDA graphs, Liger eager between them), bf16-mixed;
    every step's loss is the plain loss's to bf16's precision."""
    fused, plain = (gpu_step_losses(data_root, tmp_path / flag, f"fused_loss={flag}") for flag in ("true", "false"))
    assert fused == {step: pytest.approx(loss, rel=1e-2) for step, loss in plain.items()}
