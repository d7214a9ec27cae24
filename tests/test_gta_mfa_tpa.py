"""GTA, MFA and TPA against from-scratch transcriptions of their papers' equations (tests/references.py), their
compact decode paths against the training form, and their one-line errors for impossible sizes.

tests/test_attention.py runs every attention config through the shared checks as well: cached decode equals the
full forward (both block families, fp64 and fp32), cache bytes measured from the real tensors, cache elements per
tensor-parallel device, parameter counts.
"""

import pytest
import torch
from references import gta_weights, mfa_weights, reference_gta, reference_mfa
from test_attention import CTX, D, H, assert_matches_reference, make_attention

from latentlm.model.attention.gta import GroupedTiedAttention
from latentlm.model.attention.mfa import MultiMatrixFactorizationAttention

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
    ],
)
def test_impossible_sizes_give_one_line_errors(cls, options, message):
    with pytest.raises(ValueError, match=f"^{message}") as raised:
        cls(512, 8, 16, **options)
    assert "\n" not in str(raised.value)
