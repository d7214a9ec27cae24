"""The FLOPs behind MFU: train_flops_per_token against matmul FLOPs counted by hand; the phase timer on a GPU."""

from functools import partial

import pytest
import torch
from test_attention import attention_cfg

from latentlm.callbacks import train_flops_per_token
from latentlm.model import GPT

D, LAYERS, H, T, VOCAB, PADDED = 64, 2, 4, 16, 101, 128
HD = D // H


def forward_flops_per_token(name: str) -> int:
    """Matmul FLOPs (2 per multiply-add) of one token's forward pass; attention scores and the weighted sum are
    counted over all T keys, as PaLM's 6N + 12LTd convention does (the causal half is not subtracted)."""
    mlp = 2 * D * 4 * D * 2
    out = 2 * D * D
    r, rope = D // 2, HD // 2  # rank 0.5, rope_dim = head_dim / 2
    layer = {
        "mha": 2 * D * 3 * D + 2 * T * D + 2 * T * D,  # qkv; q.k over T keys; weights x v
        "gqa": 2 * D * (D + 2 * 2 * HD) + 2 * T * D + 2 * T * D,  # two K/V heads
        # queries with rotary dims, latent + rotary key; decompress K and V; attention over d_h + rope dims
        "mla_rope": 2 * D * (H * (HD + rope) + r + rope) + 2 * r * H * 2 * HD + 2 * T * H * (HD + rope) + 2 * T * D,
    }[name]
    return LAYERS * (layer + out + mlp) + 2 * D * PADDED  # the LM head over the padded vocabulary


@pytest.mark.parametrize("name", ["mha", "gqa", "mla_rope"])
def test_train_flops_per_token_is_three_forwards_of_matmuls(name):
    build = partial(GPT, VOCAB, D, LAYERS, H, T, attention_cfg(name, rank=0.5))
    assert train_flops_per_token(build, T) == 3 * forward_flops_per_token(name)  # backward = 2 x forward


@pytest.mark.gpu
def test_phase_times_take_the_steps_gpu_time_from_cuda_events():
    """Each step enqueues ~the same GPU work and returns at once; the first step waits for its work (one sync), the
    later ones are timed by CUDA events: together they must hold about three times the first step's time, where host
    timing would hold almost nothing."""
    from types import SimpleNamespace

    from latentlm.callbacks import PhaseTimes, TimedCheckpointIO

    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"))
    timer = PhaseTimes(TimedCheckpointIO())
    torch.cuda._sleep(1000)  # the CUDA context exists before timing starts
    torch.cuda.synchronize()
    timer.on_fit_start(trainer, None)
    for step in range(4):
        timer.on_train_batch_start(trainer, None, None, step)
        torch.cuda._sleep(20_000_000)  # GPU busy for ~10 ms; the host goes on at once
        timer.on_train_batch_end(trainer, None, None, None, step)
    timer.on_fit_end(trainer, None)
    phases = timer.phases()
    assert 2.0 < phases["steps"] / phases["first_step"] < 4.0
