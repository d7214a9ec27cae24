"""Every attention variant: cached decode equals the full forward, absorbed equals naive, exact cache sizes."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from latentlm.config import CONFIG_DIR, group_choices, register_resolvers
from latentlm.model import GPT, KVCache

register_resolvers()
VARIANTS = group_choices("attention")
D, H, LAYERS, CTX, VOCAB = 64, 4, 2, 48, 101


def attention_cfg(name: str, rank: float = 0.5, **extra) -> dict:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"attention={name}", f"rank={rank}"])
    att = OmegaConf.to_container(cfg.attention, resolve=True)
    att.update(extra)
    return att


def make_gpt(name: str, rank: float = 0.5, dtype=torch.float64, seed: int = 0, **extra) -> GPT:
    torch.manual_seed(seed)
    return GPT(VOCAB, D, LAYERS, H, CTX, attention_cfg(name, rank, **extra)).to(dtype).eval()


def decode_logits(model: GPT, idx: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Prefill chunks[0] tokens, then feed the rest in chunks of the given sizes (1 = one decode step)."""
    caches = model.new_caches(idx.size(0), CTX, dtype=next(model.parameters()).dtype)
    out, pos = [], 0
    for n in chunks:
        out.append(model(idx[:, pos : pos + n], caches, pos))
        pos += n
    assert pos == idx.size(1)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cached_decode_equals_full_forward(name, dtype, tol):
    model = make_gpt(name, dtype=dtype)
    idx = torch.randint(0, VOCAB, (3, 40))
    full = model(idx)
    for absorb in (True, False):
        for block in model.blocks:
            if hasattr(block.attn, "absorb"):
                block.attn.absorb = absorb
        inc = decode_logits(model, idx, [9, 1, 5, *([1] * 25)])  # prefill, step, a chunk, steps
        assert ((inc - full).norm() / full.norm()).item() <= tol


@pytest.mark.parametrize("name", [n for n in VARIANTS if attention_cfg(n)["type"] == "latent"])
@pytest.mark.parametrize("rank", [0.25, 1.0])
def test_absorbed_equals_naive(name, rank):
    model = make_gpt(name, rank=rank, q_rank=0.5)
    idx = torch.randint(0, VOCAB, (2, 30))
    logits = {}
    for absorb in (True, False):
        for block in model.blocks:
            block.attn.absorb = absorb
        logits[absorb] = decode_logits(model, idx, [12, *([1] * 18)])
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "n_kv_heads"), [("mqa", 1), ("mha_rope", H)])
def test_mqa_and_mha_are_gqa_with_one_and_every_kv_head(name, n_kv_heads):
    special = make_gpt(name)
    gqa = make_gpt("gqa", n_kv_heads=n_kv_heads)
    gqa.load_state_dict(special.state_dict())
    idx = torch.randint(0, VOCAB, (2, 20))
    torch.testing.assert_close(special(idx), gqa(idx), rtol=0, atol=0)


def test_mlra_with_one_block_is_mla():
    mla = make_gpt("mla_rope")
    mlra = make_gpt("mlra", n_blocks=1)
    mlra.load_state_dict(mla.state_dict())
    idx = torch.randint(0, VOCAB, (2, 20))
    torch.testing.assert_close(mla(idx), mlra(idx), rtol=0, atol=0)


def test_mlra_sums_blocks_scaled():
    """MLRA output = sum over blocks of a one-block attention on that block's latent, / sqrt(n_blocks)."""
    model = make_gpt("mlra", gated=False)
    attn = model.blocks[0].attn
    x = torch.randn(2, 10, D, dtype=torch.float64)
    q_in, latent, k_rope = attn.w_in(x).split([attn.q_in_dim, attn.latent_dim, attn.rope_dim], dim=-1)
    q_nope, q_rope = attn._queries(q_in, 0)
    latent, k_rope = attn._latent(latent, k_rope, 0)
    nb, bd = attn.n_blocks, attn.block_dim
    per_block = []
    for b in range(nb):
        w = attn.wkv_b[b].view(H, 2, attn.head_dim, bd)
        c = latent[..., b * bd : (b + 1) * bd]
        k = torch.cat((torch.einsum("bsc,hdc->bhsd", c, w[:, 0]), k_rope[:, None].expand(-1, H, -1, -1)), -1)
        v = torch.einsum("bsc,hdc->bhsd", c, w[:, 1])
        q = torch.cat((q_nope, q_rope), -1).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(attn.qk_dim)
        scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
        per_block.append(scores.softmax(-1) @ v)
    expected = (sum(per_block) / math.sqrt(nb)).transpose(1, 2).reshape(2, 10, D)
    torch.testing.assert_close(attn._attend_naive(q_nope, q_rope, latent, k_rope).reshape(2, 10, D), expected)


# Elements cached per token per layer, as each variant's paper defines them.
def expected_cache(name: str, rank: float, d: int = D, h: int = H) -> int:
    hd = d // h
    latent = round(rank * d)
    return {
        "mha": 2 * d,
        "mha_rope": 2 * d,
        "mqa": 2 * hd,
        "gqa": 2 * 2 * hd,
        "mla": latent,
        "mla_rope": latent + hd // 2,
        "mla_rope_split": 2 * latent + hd // 2,
        "mlra": latent + hd // 2,
        "mlra_gated": latent + hd // 2,
    }[name]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("rank", [0.25, 0.5, 1.0])
def test_cache_formula_matches_measured_bytes(name, rank):
    model = make_gpt(name, rank=rank, dtype=torch.bfloat16)
    batch, steps = 3, 17
    caches = model.new_caches(batch, steps, dtype=torch.bfloat16)
    idx = torch.randint(0, VOCAB, (batch, steps))
    model(idx[:, :5], caches, 0)
    for t in range(5, steps):
        model(idx[:, t : t + 1], caches, t)
    for block, cache in zip(model.blocks, caches, strict=True):
        assert block.attn.kv_cache_elements() == expected_cache(name, rank)
        assert cache.nbytes == batch * steps * expected_cache(name, rank) * 2  # bf16: 2 bytes an element
    assert model.kv_cache_elements() == LAYERS * expected_cache(name, rank)


def test_rank_scales_latent_cache():
    sizes = {r: make_gpt("mla", rank=r).kv_cache_elements() for r in (0.25, 0.5, 1.0)}
    assert sizes == {0.25: LAYERS * 16, 0.5: LAYERS * 32, 1.0: LAYERS * 64}


def test_cache_rejects_overflow():
    cache = KVCache({"k": (2,)}, batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.append(3, k=torch.zeros(1, 2, 2))


# Attention parameters per layer, in closed form (no biases).
def expected_attention_params(name: str, rank: float, d: int = D, h: int = H) -> int:
    hd = d // h
    r, rope = round(rank * d), hd // 2
    gqa = lambda kv: d * d + d * 2 * kv * hd + d * d  # noqa: E731  q, kv, out
    latent = d * h * (hd + rope) + d * (r + rope) + r + h * 2 * hd * r + h * hd * d  # q, kv_a, norm, kv_b, o
    return {
        "mha": gqa(h),
        "mha_rope": gqa(h),
        "mqa": gqa(1),
        "gqa": gqa(2),
        "mla": d * h * hd + d * r + r + h * 2 * hd * r + h * hd * d,
        "mla_rope": latent,
        "mla_rope_split": latent + d * r + r,  # a second down-projection and RMSNorm, for c_v
        "mlra": latent,
        "mlra_gated": latent + d * h * hd,
    }[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts_match_formulas(name):
    model = make_gpt(name, rank=0.5)
    attn = model.blocks[0].attn
    assert sum(p.numel() for p in attn.parameters()) == expected_attention_params(name, 0.5)
    per_block_rest = 2 * 2 * D + 8 * D * D  # two LayerNorms (weight + bias) + the 4x MLP
    embeddings = 128 * D + (CTX * D if model.wpe is not None else 0)  # vocab 101 padded to 128; tied head
    total = embeddings + LAYERS * (expected_attention_params(name, 0.5) + per_block_rest) + 2 * D
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - embeddings


def test_sequence_longer_than_context_is_refused():
    model = make_gpt("mha")
    with pytest.raises(ValueError, match="longer than the context block_size=48"):
        model(torch.zeros(1, CTX + 1, dtype=torch.long))
