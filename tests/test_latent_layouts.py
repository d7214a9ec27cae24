"""Latent attention layouts: split K and V latents (`kv_latent: split`) and rotary dims inside the head
(`rope_in_head`), against a from-scratch reference, across decode paths, and by the bytes their caches hold."""

import math

import pytest
import torch
from test_attention import CHUNKS, DECODE_PATHS, decode_logits, use_decode_path

from latentlm.model import GPT
from latentlm.model.attention.latent import LatentAttention

D, H, LAYERS, CTX, VOCAB = 64, 4, 2, 48, 101
HD = D // H

# Options on top of mla_rope's defaults (rank 0.5, rope_dim = d_h / 2, joint latent, rotary dims appended).
LAYOUTS = {
    "split": dict(kv_latent="split"),
    "split_blocks": dict(kv_latent="split", n_branches=2),
    "split_branches_groups": dict(kv_latent="split", n_branches=2, n_groups=2),
    "split_no_rope": dict(kv_latent="split", rope_dim=0, pos_emb="learned"),
    "rope_in_head": dict(rope_in_head=True),
    "split_rope_in_head_q_rank": dict(kv_latent="split", rope_in_head=True, q_rank=0.5),
}


def make_gpt(rank: float = 0.5, dtype=torch.float64, **options) -> GPT:
    torch.manual_seed(0)
    target = "latentlm.model.attention.latent.LatentAttention"
    attention = {"_target_": target, "pos_emb": "none", "rank": rank, **options}
    return GPT(VOCAB, D, LAYERS, H, CTX, attention).to(dtype).eval()


def path_logits(model: GPT, idx: torch.Tensor, path: str) -> torch.Tensor:
    use_decode_path(model, path)
    return decode_logits(model, idx, CHUNKS)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_absorbed_equals_naive_decode(layout):
    model = make_gpt(**LAYOUTS[layout])
    idx = torch.randint(0, VOCAB, (2, 40))
    naive = path_logits(model, idx, "naive")
    for path in ("absorbed", "mixed"):
        torch.testing.assert_close(path_logits(model, idx, path), naive, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", DECODE_PATHS)
def test_cached_decode_equals_full_forward(layout, path):
    model = make_gpt(**LAYOUTS[layout])
    idx = torch.randint(0, VOCAB, (3, 40))
    full = model(idx)
    inc = path_logits(model, idx, path)
    assert ((inc - full).norm() / full.norm()).item() <= 1e-10


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["split", "split_blocks"])
def test_split_layout_decodes_on_gpu_in_bf16(layout):
    """Split rows take SDPA over the cache on a GPU too (the Triton kernel reads joint rows only): in bf16, every
    decode path gives the fp32 CPU model's logits to bf16's precision (about 5e-3 here)."""
    reference = make_gpt(dtype=torch.float32, **LAYOUTS[layout])
    model = make_gpt(dtype=torch.bfloat16, **LAYOUTS[layout]).cuda()
    idx = torch.randint(0, VOCAB, (3, 40))
    with torch.inference_mode():
        expected = reference(idx)
        for path in DECODE_PATHS:
            logits = path_logits(model, idx.cuda(), path).float().cpu()
            assert ((logits - expected).norm() / expected.norm()).item() < 2e-2, path


def rotate(x: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """RoPE (rotate-half layout) of x (B, T, ..., dim) at positions 0..T-1."""
    dim, T = x.size(-1), x.size(1)
    angles = torch.outer(torch.arange(T, dtype=x.dtype), base ** (-torch.arange(0, dim, 2, dtype=x.dtype) / dim))
    cos, sin = angles.cos().view(1, T, *[1] * (x.dim() - 3), -1), angles.sin().view(1, T, *[1] * (x.dim() - 3), -1)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def reference(
    attn: LatentAttention, x: torch.Tensor, kv_latent: str, rope_in_head: bool, qk_width: int
) -> torch.Tensor:
    """The equations of latent.py's docstring with plain matmuls from the module's weights (rank 0.5,
    rope_dim = d_h / 2, one block, no query compression), softmax scale 1 / sqrt(qk_width)."""
    B, T, _ = x.shape
    r, rope = D // 2, HD // 2
    nope = HD - rope if rope_in_head else HD  # latent-derived width of each q and k head
    n_latents = 2 if kv_latent == "split" else 1
    w_q, w_latents, w_kr = attn.wqkv_a.weight.split([H * (nope + rope), n_latents * r, rope])
    gains = attn.kv_norm_weight * math.sqrt(D / r)  # one row per latent: [c] or [c_v, c_k]

    def rms_norm(z: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return z / z.pow(2).mean(-1, keepdim=True).sqrt() * gain

    latents = [rms_norm(x @ w.T, g) for w, g in zip(w_latents.split(r), gains, strict=True)]
    c_v, c_k = latents[0], latents[-1]  # (B, T, r) each; the same c when joint
    w_up = attn.wkv_b.view(H, nope + HD, r)  # per head: W_uk (nope rows), then W_uv (d_h rows)
    q = (x @ w_q.T).view(B, T, H, nope + rope)
    q = torch.cat((q[..., :nope], rotate(q[..., nope:])), dim=-1)  # (B, T, H, nope + rope)
    k_pe = rotate((x @ w_kr.T).unsqueeze(2))  # (B, T, 1, rope): one rotary key for all heads
    out = []
    for h in range(H):
        k = torch.cat((c_k @ w_up[h, :nope].T, k_pe[:, :, 0]), dim=-1)  # (B, T, nope + rope)
        v = c_v @ w_up[h, nope:].T  # (B, T, d_h)
        scores = q[:, :, h] @ k.transpose(1, 2) / math.sqrt(qk_width)  # (B, T, T)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        out.append(scores.softmax(-1) @ v)
    return attn.wo(torch.cat(out, dim=-1))


def relative_error(y: torch.Tensor, expected: torch.Tensor) -> float:
    """Over the whole output: the module rotates in fp32 (rope.py), the reference in fp64 (about 3e-8 here)."""
    return ((y - expected).norm() / expected.norm()).item()


def randomised(attn: LatentAttention) -> LatentAttention:
    """Weights large enough that the softmax is far from uniform and every norm gain differs from 1."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(std=0.2)
        attn.kv_norm_weight.add_(1.0)
    return attn


@pytest.mark.parametrize("kv_latent", ["joint", "split"])
@pytest.mark.parametrize("rope_in_head", [False, True])
def test_training_forward_matches_reference(kv_latent, rope_in_head):
    attn = randomised(LatentAttention(D, H, CTX, kv_latent=kv_latent, rope_in_head=rope_in_head).double())
    x = torch.randn(2, 20, D, dtype=torch.float64)
    qk_width = HD if rope_in_head else HD + HD // 2
    assert relative_error(attn(x), reference(attn, x, kv_latent, rope_in_head, qk_width)) < 1e-6


def test_rope_in_head_attends_with_head_dim_qk_width():
    """mha_rope's q.k width and scale: queries are d_h wide, of which rope_dim rotate; the appended form's
    scale 1/sqrt(d_h + rope_dim) would give other outputs (so the reference can tell them apart)."""
    attn = randomised(LatentAttention(D, H, CTX, rope_in_head=True).double())
    rope = HD // 2
    assert attn.wqkv_a.weight.shape == (H * HD + D // 2 + rope, D)  # queries H x d_h, as mha_rope's
    assert attn.wkv_b.shape == (1, H * (HD - rope + HD), D // 2)  # W_uk: d_h - rope_dim a head; W_uv: d_h
    x = torch.randn(2, 20, D, dtype=torch.float64)
    y = attn(x)
    assert relative_error(y, reference(attn, x, "joint", True, HD)) < 1e-6
    assert relative_error(y, reference(attn, x, "joint", True, HD + rope)) > 1e-2


def held_bytes(caches) -> int:
    return sum(t.untyped_storage().nbytes() for cache in caches for t in cache.tensors.values())


@pytest.mark.parametrize(("kv_latent", "rank"), [("joint", 0.5), ("split", 0.5), ("split", 0.25)])
def test_cache_bytes_measured_equal_formula(kv_latent, rank):
    """Per token, all layers: the storage a cache grows by with its length, and the elements a prefill and
    decode steps write, both equal (r + rope_dim) joint or (2r + rope_dim) split x 2 bytes (bf16) x layers."""
    model = make_gpt(rank, torch.bfloat16, kv_latent=kv_latent)
    r, rope = round(rank * D), HD // 2
    per_token = {"joint": r + rope, "split": 2 * r + rope}[kv_latent] * 2 * LAYERS
    batch, prompt, steps = 2, 7, 5
    caches = model.new_caches(batch, CTX, dtype=torch.bfloat16)
    growth = held_bytes(model.new_caches(batch, 2 * CTX, dtype=torch.bfloat16)) - held_bytes(caches)
    assert growth == batch * CTX * per_token
    idx = torch.randint(0, VOCAB, (batch, prompt + steps))
    with torch.no_grad():
        model(idx[:, :prompt], caches, 0)
        for t in range(prompt, prompt + steps):
            model(idx[:, t : t + 1], caches, t)
    written = sum(int((t != 0).sum()) * t.element_size() for cache in caches for t in cache.tensors.values())
    assert written == batch * (prompt + steps) * per_token  # every held column carries data, nothing more
    assert model.kv_cache_elements() * 2 == per_token


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(rope_in_head=True, rope_dim=HD), "rope_in_head needs 0 < rope_dim < head_dim"),
        (dict(rope_in_head=True, rope_dim=0), "rope_in_head needs 0 < rope_dim < head_dim"),
        (dict(kv_latent="both"), "kv_latent='both' must be 'joint' or 'split'"),
    ],
)
def test_impossible_layouts_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        LatentAttention(D, H, CTX, **options)
