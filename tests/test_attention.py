"""Every attention variant against independent references; cached decode equals the full forward, absorbed equals
naive, exact cache sizes."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from references import gqa_weights, latent_weights, reference_gqa, reference_latent

from latentlm.config import compose_train, group_choices
from latentlm.model import GPT, KVCache
from latentlm.model.attention import Attention, build_attention
from latentlm.model.attention.latent import LatentAttention
from latentlm.model.gpt import BLOCKS

VARIANTS = group_choices("attention")
D, H, LAYERS, CTX, VOCAB = 64, 4, 2, 48, 101


def attention_cfg(name: str, rank: float = 0.5, **extra) -> dict:
    cfg = compose_train([f"attention={name}", f"rank={rank}"])
    att = OmegaConf.to_container(cfg.attention, resolve=True)
    att.update(extra)
    return att


def gpt_config(name: str, rank: float = 0.5, block: str = "gpt2", **extra) -> dict:
    """The test GPT's keyword arguments but vocab_size (what LitGPT takes as `model`), attention `name`."""
    return dict(
        d_model=D, n_layer=LAYERS, n_head=H, block_size=CTX, block=block, attention=attention_cfg(name, rank, **extra)
    )


def make_gpt(name: str, rank: float = 0.5, dtype=torch.float64, seed: int = 0, block: str = "gpt2", **extra) -> GPT:
    torch.manual_seed(seed)
    return GPT(VOCAB, **gpt_config(name, rank, block, **extra)).to(dtype).eval()


# Which chunks of cached queries latent layers attend to absorbed: (absorb, absorb_max_tokens). "mixed" sends
# chunks of up to 4 tokens (decode steps, short chunks) through the absorbed path and longer ones through the naive.
DECODE_PATHS = {"absorbed": (True, CTX), "mixed": (True, 4), "naive": (False, CTX)}
CHUNKS = [9, 1, 5, 3, *([1] * 22)]  # prefill, a step, chunks on both sides of "mixed"'s 4, steps: 40 tokens


def use_decode_path(model: GPT, path: str) -> None:
    for block in model.blocks:
        if hasattr(block.attn, "absorb"):
            block.attn.absorb, block.attn.absorb_max_tokens = DECODE_PATHS[path]


def decode_logits(model: GPT, idx: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Prefill chunks[0] tokens, then feed the rest in chunks of the given sizes (1 = one decode step)."""
    caches = model.new_caches(idx.size(0), CTX, idx.device, next(model.parameters()).dtype)
    out, pos = [], 0
    for n in chunks:
        out.append(model(idx[:, pos : pos + n], caches, pos))
        pos += n
    assert pos == idx.size(1)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cached_decode_equals_full_forward(name, dtype, tol, block):
    model = make_gpt(name, dtype=dtype, block=block)
    idx = torch.randint(0, VOCAB, (3, 40))
    full = model(idx)
    for path in DECODE_PATHS:
        use_decode_path(model, path)
        inc = decode_logits(model, idx, CHUNKS)
        assert ((inc - full).norm() / full.norm()).item() <= tol, path


@pytest.mark.parametrize("name", [n for n in VARIANTS if "rank" in attention_cfg(n)])
@pytest.mark.parametrize("rank", [0.25, 1.0])
@pytest.mark.parametrize("block", BLOCKS)
def test_absorbed_equals_naive(name, rank, block):
    model = make_gpt(name, rank=rank, block=block, q_rank=0.5)
    idx = torch.randint(0, VOCAB, (2, 40))
    logits = {}
    for path in DECODE_PATHS:
        use_decode_path(model, path)
        logits[path] = decode_logits(model, idx, CHUNKS)
    torch.testing.assert_close(logits["absorbed"], logits["naive"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits["mixed"], logits["naive"], rtol=1e-10, atol=1e-12)


def fuse_absorption(model: GPT) -> list[LatentAttention]:
    layers = [block.attn for block in model.blocks if isinstance(block.attn, LatentAttention)]
    for attn in layers:
        attn.fuse_absorption()
    return layers


@pytest.mark.parametrize("name", [n for n in VARIANTS if "rank" in attention_cfg(n) and not attention_cfg(n)["gated"]])
@pytest.mark.parametrize("q_rank", [None, 0.5])
def test_fused_absorption_equals_the_absorbed_path(name, q_rank):
    """W_uk folded into the query projection and W_uv into W_o (DeepSeek-V2's inference form) give the absorbed
    path's logits, for decode steps and short chunks ("mixed": longer chunks stay naive)."""
    model = make_gpt(name, q_rank=q_rank)
    idx = torch.randint(0, VOCAB, (2, 40))
    for path in ("absorbed", "mixed"):
        use_decode_path(model, path)
        unfused = decode_logits(model, idx, CHUNKS)
        layers = fuse_absorption(model)
        torch.testing.assert_close(decode_logits(model, idx, CHUNKS), unfused, rtol=1e-10, atol=1e-12)
        model.train()
        assert all(attn.w_q_fused is None and attn.w_o_fused is None for attn in layers)  # stale once it trains
        model.eval()


def test_fused_absorption_leaves_checkpoints_alone_and_refuses_a_gated_layer():
    model = make_gpt("mla_rope")
    keys = set(model.state_dict())
    fuse_absorption(model)
    assert set(model.state_dict()) == keys
    with pytest.raises(ValueError, match="^a gated latent layer cannot fold W_uv into W_o"):
        fuse_absorption(make_gpt("mlra_gated"))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, 85),  # MLA+RoPE: c = 256, d_h = 64: T < c d_h / (c - d_h) = 85.3
        ({"kv_latent": "split"}, 85),  # split latents cost the same per position
        ({"rank": 1.0}, 73),  # c = 512: T < 512 * 64 / 448 = 73.1
        ({"rank": 0.25}, 127),  # c = 128: T < 128 * 64 / 64 = 128
        ({"rope_in_head": True}, 59),  # d_nope = 32: T (2c - 32 - 64) < c (32 + 64): T < 59.1
        ({"n_branches": 4}, 512),  # MLRA-4: c = 64 = d_h, absorbed never costs more: any chunk up to the context
        ({"n_groups": 2}, 127),  # GLA-2: c = 128: T < 128 * 128 / 128 = 128
        ({"n_branches": 2, "n_groups": 2}, 512),  # MLRA-2: c = 64, as MLRA-4
    ],
)
def test_absorb_max_tokens_defaults_to_the_flop_crossover(options, expected):
    """For the 30m model's layer (d_model 512, 8 heads, context 512) at rank 0.5 unless set: the largest chunk
    for which the absorbed path's attention FLOPs are fewer than the naive path's decompression plus attention."""
    assert LatentAttention(512, 8, 512, **options).absorb_max_tokens == expected


def test_a_cached_chunk_longer_than_absorb_max_tokens_takes_the_naive_path(monkeypatch):
    model = make_gpt("mla_rope")
    attn = model.blocks[0].attn
    assert attn.absorb_max_tokens == 31  # c = 32, d_nope = d_h = 16: T < 32 * 32 / (64 - 32)
    calls = []

    def spy(method: str) -> None:
        original = getattr(attn, method)

        def recorded(q_nope, *args):
            calls.append((method, q_nope.size(1)))
            return original(q_nope, *args)

        monkeypatch.setattr(attn, method, recorded)

    spy("_attend_naive")
    spy("_attend_absorbed")
    idx = torch.randint(0, VOCAB, (1, 40))
    caches = model.new_caches(1, CTX, dtype=torch.float64)
    model(idx[:, :32], caches, 0)
    model(idx[:, 32:33], caches, 32)
    model(idx[:, 33:40], caches, 33)
    caches = model.new_caches(1, CTX, dtype=torch.float64)
    model(idx[:, :31], caches, 0)
    assert calls == [("_attend_naive", 32), ("_attend_absorbed", 1), ("_attend_absorbed", 7), ("_attend_absorbed", 31)]


def make_attention(name: str, **extra) -> tuple[Attention, dict]:
    """One attention layer of config `name` in float64, every weight drawn at unit scale (so softmaxes are sharp
    and every weight, norm gains included, moves the output), and its config."""
    cfg = attention_cfg(name, **extra)
    args = {k: v for k, v in cfg.items() if k not in ("name", "twin", "pos_emb")}
    torch.manual_seed(0)
    attn = build_attention(d_model=D, n_head=H, max_seq_len=CTX, **args).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(p.size(-1)))
    return attn, cfg


def assert_matches_reference(attn: Attention, expected_of, T: int = 12) -> None:
    """The layer's full forward, and a prefill of 5 tokens then decode steps through its cache, equal the reference.

    The tolerance is float64's, except that latentlm's rotary runs in float32 whatever the model's dtype (rope.py):
    that leaves about 3e-8 of relative error, still far below what a wrong angle, pairing or scale gives (> 1e-2).
    """
    tol = 2e-7 if attn.rotary is not None else 1e-12
    x = torch.randn(2, T, D, dtype=torch.float64)
    expected = expected_of(x)
    cache = attn.new_cache(2, T, dtype=torch.float64)
    steps = [attn(x[:, :5], cache, 0), *(attn(x[:, t : t + 1], cache, t) for t in range(5, T))]
    for out in (attn(x), torch.cat(steps, dim=1)):
        assert ((out - expected).norm() / expected.norm()).item() <= tol


@pytest.mark.parametrize(("name", "n_kv_heads"), [("mqa", 1), ("gqa", 2), ("mha_rope", H), ("mha", H)])
def test_gqa_matches_reference(name, n_kv_heads):
    attn, cfg = make_attention(name)
    assert (cfg["n_kv_heads"] or H) == n_kv_heads
    w = gqa_weights(attn, D, n_kv_heads, D // H)
    assert_matches_reference(attn, lambda x: reference_gqa(x, w, H, n_kv_heads, cfg["rope"]))


# DeepSeek's equations have one joint latent whose blocks serve every head; split K and V latents meet their own
# reference in test_latent_layouts, head groups (GLA, MLRA-2) theirs in test_latent_family.
@pytest.mark.parametrize(
    "name",
    [n for n in VARIANTS if "rank" in attention_cfg(n) and attention_cfg(n)["kv_latent"] == "joint"
     and attention_cfg(n)["n_groups"] == 1],
)
@pytest.mark.parametrize(
    "extra", [{}, {"q_rank": 0.25}, {"latent_scale": False}], ids=["q_from_x", "q_rank", "no_latent_scale"]
)
@pytest.mark.parametrize("absorb", [True, False])
def test_latent_matches_deepseek_reference(name, extra, absorb):
    """MLA, MLA + RoPE, MLRA (4 blocks) and gated MLRA against DeepSeek-V2's equations, on both decode paths."""
    attn, cfg = make_attention(name, absorb=absorb, **extra)
    hd = D // H
    rope_dim = hd // 2 if cfg["rope_dim"] is None else cfg["rope_dim"]
    q_latent = None if cfg["q_rank"] is None else round(cfg["q_rank"] * D)
    w = latent_weights(attn, H, hd, rope_dim, round(cfg["rank"] * D), q_latent, cfg["n_branches"])
    assert w["w_uk"].shape[:2] == (cfg["n_branches"], H) and ("w_g" in w) == cfg["gated"]
    assert_matches_reference(attn, lambda x: reference_latent(x, w, cfg["latent_scale"]))


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
        "gla2": latent + hd // 2,  # 2 blocks of r / 2
        "gla4": latent + hd // 2,  # 4 blocks of r / 4
        "mlra2": latent + hd // 2,  # 2 branches x 2 groups: 4 blocks of r / 4
        "gta": 2 * hd + hd // 2,  # 2 tied states + the shared rotary key
        "mfa": 2 * 2 * hd,  # k and v of one head of width C = 2 d_h
        "tpa": (2 + 2) * (h + hd),  # A^K, B^K, A^V, B^V at R_K = R_V = 2
    }[name]


def held_bytes(root: object) -> int:
    """Bytes of the distinct tensor storages reachable from `root` through attributes, dicts, lists and tuples:
    what an object keeps alive, whatever its fields are called."""
    storages, seen, todo = {}, set(), [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            todo += obj.values()
        elif isinstance(obj, (list, tuple)):
            todo += obj
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            todo += vars(obj).values()
    return sum(storages.values())


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("rank", [0.25, 0.5, 1.0])
def test_cache_formula_matches_measured_bytes(name, rank):
    """After a prefill and decode steps, the caches hold the formula's bytes and no more (nothing else is kept,
    in the cache or on the model), and every position of them was written."""
    model = make_gpt(name, rank=rank, dtype=torch.bfloat16)
    model_bytes = held_bytes(model)
    batch, steps = 3, 17
    caches = model.new_caches(batch, steps, dtype=torch.bfloat16)
    idx = torch.randint(0, VOCAB, (batch, steps))
    model(idx[:, :5], caches, 0)
    for t in range(5, steps):
        model(idx[:, t : t + 1], caches, t)
    assert held_bytes(caches) == LAYERS * batch * steps * expected_cache(name, rank) * 2  # bf16: 2 bytes an element
    assert held_bytes(model) == model_bytes
    for cache in caches:
        for tensor in cache.tensors.values():
            assert tensor.flatten(2).abs().sum(-1).gt(0).all()  # every (sequence, position) holds its token's entry
    for block in model.blocks:
        assert block.attn.kv_cache_elements() == expected_cache(name, rank)
    assert model.kv_cache_elements() == LAYERS * expected_cache(name, rank)


# Cached elements per token and layer on one device at tensor-parallel degree 1 / 2 / 4, for the 30m model (d 512,
# 8 heads of 64, rank 0.5: r = 256, rotary key 32), as ../shared/reference/variants.md tabulates them.
PER_DEVICE_30M = {
    "mha": (1024, 512, 256),
    "mha_rope": (1024, 512, 256),
    "gqa": (256, 128, 128),  # 2 KV heads: TP-4 replicates them
    "mqa": (128, 128, 128),
    "mla": (256, 256, 256),  # one latent: replicated on every device
    "mla_rope": (288, 288, 288),
    "mla_rope_split": (544, 544, 544),
    "mlra": (288, 160, 96),  # 4 blocks of 64 + the rotary key
    "mlra_gated": (288, 160, 96),
    "gla2": (288, 160, 160),  # 2 blocks of 128: TP-4 replicates each on 2 devices, which split its 4 heads
    "gla4": (288, 160, 96),
    "mlra2": (288, 160, 96),  # TP-2: a head group's 2 blocks (one a branch) a device
    "gta": (160, 96, 96),  # 2 tied states of 64 split, the rotary key of 32 replicated
    "mfa": (256, 256, 256),  # the one K/V head (C = 128) replicated
    "tpa": (288, 272, 264),  # (R_K + R_V)(H / tp + d_h): head factors split, dim factors replicated
}


@pytest.mark.parametrize("name", VARIANTS)
def test_cache_elements_per_tensor_parallel_device(name):
    cfg = compose_train([f"attention={name}", "model=30m", "rank=0.5"])
    attn = build_attention(**{k: v for k, v in OmegaConf.to_container(cfg.attention, resolve=True).items()
                              if k not in ("name", "twin", "pos_emb")}, d_model=512, n_head=8, max_seq_len=16)
    per_device = tuple(attn.kv_cache_elements_per_device(tp) for tp in (1, 2, 4))
    assert per_device[0] == attn.kv_cache_elements()
    assert per_device == PER_DEVICE_30M[name]


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
    grouped = lambda g: latent - h * 2 * hd * r + h // g * 2 * hd * r  # noqa: E731  a block up-projects H/g heads
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
        "gla2": grouped(2),
        "gla4": grouped(4),
        "mlra2": grouped(2),
        "gta": d * d + d * (2 * hd + rope) + d * d,  # q, [u of 2 groups ; k_pe], out
        # [W_qa; W_k; W_v] (query latent 0.625 d, C = 2 d_h), the query norm, W_qb to H heads of C, out from H C
        "mfa": d * (round(0.625 * d) + 2 * 2 * hd) + round(0.625 * d) + round(0.625 * d) * 2 * d + 2 * d * d,
        "tpa": d * (6 + 2 + 2) * (h + hd) + d * d,  # the A and B factors at R_Q, R_K, R_V = 6, 2, 2; out
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


def test_unknown_block_is_refused():
    with pytest.raises(ValueError, match=r"model.block='bert' is unknown; choose one of: gpt2, llama"):
        make_gpt("mha", block="bert")


def test_llama_block_has_rmsnorm_swiglu_and_no_biases():
    """Per block: two RMSNorm weights and three SwiGLU matrices of 64 * ceil(8d/3 / 64) = 192 columns; the final
    norm has a weight only."""
    gpt2, llama = make_gpt("mha_rope"), make_gpt("mha_rope", block="llama")
    attention = expected_attention_params("mha_rope", 0.5)
    assert llama.num_params(non_embedding=True) == LAYERS * (attention + 2 * D + 3 * D * 192) + D
    assert gpt2.num_params(non_embedding=True) == LAYERS * (attention + 2 * 2 * D + 8 * D * D) + 2 * D
    assert not [n for n, _ in llama.named_parameters() if n.endswith("bias")]
