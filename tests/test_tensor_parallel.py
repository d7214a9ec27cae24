"""Tensor-parallel decode (latentlm.model.tensor_parallel): the shards' parts of a layer sum to the layer (in one
process, every tp and layout), and sharded prefill + greedy decode over gloo at 2 and 4 processes equals the
single-process model, with each rank's real cache holding `kv_cache_elements_per_device(tp)` per token."""

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from test_attention import PER_DEVICE_30M
from tp_worker import decode_every_variant

from latentlm.config import compose_train
from latentlm.model import GPT
from latentlm.model.attention import build_attention
from latentlm.model.tensor_parallel import gqa_plan, greedy_decode, latent_plan, shard_attention

D, H, LAYERS, CTX, VOCAB = 64, 8, 2, 24, 101  # 8 heads: GQA-2 and GLA-2 still split at TP-4
VARIANTS = ["mla_rope", "mlra", "gla2", "gla4", "mlra2", "gqa", "mha", "mla_rope_split"]
PROMPT, STEPS = 5, 6


def attention_args(name: str, **extra) -> dict:
    cfg = OmegaConf.to_container(compose_train([f"attention={name}", "rank=0.5"]).attention, resolve=True)
    return {**cfg, **extra}


def layer(name: str, d: int = D, h: int = H, **extra):
    args = {k: v for k, v in attention_args(name, **extra).items() if k not in ("name", "twin", "pos_emb")}
    return build_attention(d_model=d, n_head=h, max_seq_len=CTX, **args)


@pytest.mark.parametrize(
    ("name", "extra"),
    [(n, {}) for n in VARIANTS]
    + [("mlra_gated", {"q_rank": 0.5}), ("gla2", {"kv_latent": "split", "rope_in_head": True}),
       ("mlra2", {"absorb": False}), ("mqa", {}), ("mla", {})],
)
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_shards_sum_to_the_layer(name, extra, tp):
    """Without processes: every device's part (prefill, then decode steps through its own cache) summed over the
    devices is the layer's output; each device serves its heads once."""
    torch.manual_seed(0)
    attn = layer(name, **extra).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(p.size(-1)))
    x = torch.randn(2, 9, D, dtype=torch.float64)
    expected = attn(x)
    total = torch.zeros_like(expected)
    for rank in range(tp):
        local = shard_attention(attn, rank, tp)
        cache = local.new_cache(2, 9, dtype=torch.float64)
        total += torch.cat([local(x[:, :4], cache, 0), *(local(x[:, t : t + 1], cache, t) for t in range(4, 9))], 1)
        assert local.kv_cache_elements() == attn.kv_cache_elements_per_device(tp)
    assert ((total - expected).norm() / expected.norm()).item() < 1e-12


SPLIT = ("LatentAttention", "GroupedQueryAttention")  # the classes tensor_parallel splits


@pytest.mark.parametrize("name", [n for n in PER_DEVICE_30M if attention_args(n)["_target_"].endswith(SPLIT)])
def test_shards_of_the_30m_model_cache_the_tabulated_elements(name):
    """The shards a device builds for the 30m layer (d 512, 8 heads, rank 0.5) cache what variants.md tabulates
    at TP 1/2/4, on every device."""
    attn = layer(name, d=512, h=8)
    for tp, expected in zip((1, 2, 4), PER_DEVICE_30M[name], strict=True):
        assert {shard_attention(attn, rank, tp).kv_cache_elements() for rank in range(tp)} == {expected}


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (lambda: latent_plan(4, 1, 8, 0, 3), r"^tensor-parallel degree 3 cannot split n_branches=4 x n_groups=1"),
        (lambda: latent_plan(1, 1, 8, 0, 16), r"^tensor-parallel degree 16 cannot split n_branches=1 x n_groups=1 "
                                               r"latent blocks over n_head=8 heads"),
        (lambda: latent_plan(3, 2, 6, 0, 3), r"^tensor-parallel degree 3 cannot split n_branches=3 x n_groups=2"),
        (lambda: gqa_plan(2, 8, 0, 3), r"^tensor-parallel degree 3 cannot split n_kv_heads=2"),
    ],
)
def test_a_tp_the_layout_cannot_divide_is_refused(plan, message):
    with pytest.raises(ValueError, match=message):
        plan()


def test_plans_deal_blocks_group_major():
    """MLRA-2 at TP-2: a device holds one head group's two blocks (one per branch), not one branch's two groups;
    at TP-4 one block each. MLA at TP-4: the one block everywhere, 2 heads each."""
    assert [latent_plan(2, 2, 8, r, 2).blocks for r in range(2)] == [[0, 2], [1, 3]]
    assert [latent_plan(2, 2, 8, r, 2).heads for r in range(2)] == [range(0, 4), range(4, 8)]
    assert [latent_plan(2, 2, 8, r, 4).blocks for r in range(4)] == [[0], [2], [1], [3]]
    assert [latent_plan(1, 1, 8, r, 4).heads for r in range(4)] == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert [latent_plan(4, 1, 8, r, 2).blocks for r in range(2)] == [[0, 1], [2, 3]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_decode_over_gloo_equals_single_process(world_size):
    """One spawn per world size runs every variant (tests/tp_worker.py): sharded prefill + greedy steps give the
    single-process tokens and logits on every rank, and each rank's cache bytes are its per-device share."""
    attentions = {name: attention_args(name) for name in VARIANTS}
    sizes = dict(batch=2, prompt=PROMPT, steps=STEPS, layers=LAYERS, vocab=VOCAB, d_model=D, n_head=H, ctx=CTX)
    mp.spawn(decode_every_variant, args=(world_size, free_port(), attentions, sizes), nprocs=world_size)


def test_greedy_decode_is_the_models_own_decode():
    torch.manual_seed(0)
    model = GPT(VOCAB, D, LAYERS, H, CTX, attention_args("gla2")).double().eval()
    prompt = torch.randint(0, VOCAB, (2, PROMPT))
    tokens, logits = greedy_decode(model, prompt, STEPS)
    with torch.no_grad():
        full = model(torch.cat((prompt, tokens[:, :-1]), dim=1))[:, PROMPT - 1 :]
    torch.testing.assert_close(logits, full, rtol=1e-10, atol=1e-12)
    assert torch.equal(tokens, full.argmax(-1))
