"""GTA, MFA and TPA against from-scratch transcriptions of their papers' equations (tests/references.py), their
compact decode paths against the training form, and their one-line errors for impossible sizes.

tests/test_attention.py runs every attention config through the shared checks as well: cached decode equals the
full forward (both block families, fp64 and fp32), cache bytes measured from the real tensors, cache elements per
tensor-parallel device, parameter counts.
"""

import pytest
import torch
from references import gta_weights, mfa_weights, reference_gta, reference_mfa, reference_tpa, tpa_weights
from test_attention import CHUNKS, CTX, VOCAB, D, H, assert_matches_reference, decode_logits, make_attention, make_gpt

from latentlm.model.attention.gta import GroupedTiedAttention
from latentlm.model.attention.mfa import MultiMatrixFactorizationAttention
from latentlm.model.attention.tpa import TensorProductAttention

HD = D // H


@pytest.mark.parametrize("extra", [{}, {"n_kv_heads": 1}, {"n_kv_heads": H}, {"rope_dim": 4}, {"rope_dim": HD}],
                         ids=["default", "one_state", "state_per_head", "rope_dim_4", "rope_whole_head"])
def test_gta_matches_reference(extra):
    """The full forward, and a prefill then decode steps that read the tied states in place, equal GTA's equations."""
    attn, cfg = make_attention("gta", **extra)
    G = cfg["n_kv_heads"]
    rope_dim = HD // 2 if cfg["rope_dim"] is None else cfg["rope_dim"]
    w = gta_weights(attn, D, G, HD, rope_dim)
    assert_matches_reference(attn, lambda x: reference_gta(x, w, H, G))


def test_gta_decode_step_reads_the_cache_in_place(monkeypatch):
    """A one-token step takes the tied path (no keys built); a prefill or a longer chunk, the grouped SDPA path."""
    attn, _ = make_attention("gta")
    calls = []
    for method in ("_attend_tied", "_attend_grouped"):
        original = getattr(attn, method)
        monkeypatch.setattr(attn, method, lambda q, *a, m=method, f=original: calls.append((m, q.size(1))) or f(q, *a))
    x = torch.randn(1, 8, D, dtype=torch.float64)
    cache = attn.new_cache(1, CTX, dtype=torch.float64)
    attn(x[:, :5], cache, 0)
    attn(x[:, 5:6], cache, 5)
    attn(x[:, 6:8], cache, 6)
    assert calls == [("_attend_grouped", 5), ("_attend_tied", 1), ("_attend_grouped", 2)]


@pytest.mark.parametrize("extra", [{}, {"head_width": 8}, {"q_rank": 0.25}], ids=["default", "narrow", "q_rank"])
def test_mfa_matches_reference(extra):
    """MFA's full forward, and a prefill then decode steps over its one cached K/V head, equal its equations."""
    attn, cfg = make_attention("mfa", **extra)
    C = 2 * HD if cfg["head_width"] is None else cfg["head_width"]
    assert attn.kv_cache_elements() == 2 * C
    w = mfa_weights(attn, round(cfg["q_rank"] * D), C)
    assert_matches_reference(attn, lambda x: reference_mfa(x, w, H))


@pytest.mark.parametrize("factored", [True, False])
@pytest.mark.parametrize("ranks", [(6, 2, 2), (1, 3, 1)], ids=["t6", "other"])
def test_tpa_matches_reference(ranks, factored):
    """TPA's full forward, and a prefill then decode steps (contracting the cached factors, or rebuilding K and V),
    equal T6's equations with RoPE applied to q_i and k_i rather than to the B rows."""
    rank_q, rank_k, rank_v = ranks
    attn, _ = make_attention("tpa", rank_q=rank_q, rank_k=rank_k, rank_v=rank_v, factored=factored)
    assert attn.kv_cache_elements() == (rank_k + rank_v) * (H + HD)
    w = tpa_weights(attn, H, HD, ranks)
    assert_matches_reference(attn, lambda x: reference_tpa(x, w, H))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tpa_factored_decode_equals_rebuilt(dtype):
    """The FlashTPA-style step and the rebuilt K/V step give the same logits through a whole GPT."""
    model = make_gpt("tpa", dtype=dtype)
    idx = torch.randint(0, VOCAB, (3, 40))
    logits = {}
    for factored in (True, False):
        for block in model.blocks:
            block.attn.factored = factored
        logits[factored] = decode_logits(model, idx, CHUNKS)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}[dtype]
    assert ((logits[True] - logits[False]).norm() / logits[False].norm()).item() <= tol


def test_tpa_initialisation_survives_the_gpt():
    """T6's xavier bounds on the factor weights, after the GPT has re-initialised its linear layers: each block of
    W_A and W_B is uniform within its own bound and reaches close to it."""
    d, rows = D, [H * 6, H * 2, H * 2, 6 * HD, 2 * HD, 2 * HD]
    bounds = [(6 / (r * (H + d))) ** 0.5 for r in (6, 2, 2)] + [(6 / (HD * (r + d))) ** 0.5 for r in (6, 2, 2)]
    for block in make_gpt("tpa").blocks:
        for w, bound in zip(block.attn.w_ab.split(rows), bounds, strict=True):
            assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (GroupedTiedAttention, {"n_kv_heads": 3}, "n_kv_heads=3 must divide n_head=8"),
        (GroupedTiedAttention, {"n_kv_heads": 0}, "n_kv_heads=0 must divide n_head=8"),
        (GroupedTiedAttention, {"rope_dim": 5}, r"rope_dim=5 must be even and in \(0, head_dim=64\]"),
        (GroupedTiedAttention, {"rope_dim": 0}, r"rope_dim=0 must be even and in \(0, head_dim=64\]"),
        (GroupedTiedAttention, {"rope_dim": 128}, r"rope_dim=128 must be even and in \(0, head_dim=64\]"),
        (MultiMatrixFactorizationAttention, {"head_width": 63}, r"head_width=63 must be even and at least 2 \(RoPE"),
        (MultiMatrixFactorizationAttention, {"q_rank": 0.0001}, "q_rank=0.0001 gives a query latent of 0 dims"),
        (TensorProductAttention, {"rank_q": 0}, "rank_q=0 must be a whole number of factor terms, at least 1"),
        (TensorProductAttention, {"rank_v": 1.5}, "rank_v=1.5 must be a whole number of factor terms, at least 1"),
    ],
)
def test_impossible_sizes_give_one_line_errors(cls, options, message):
    with pytest.raises(ValueError, match=f"^{message}") as raised:
        cls(512, 8, 16, **options)
    assert "\n" not in str(raised.value)
