"""The latent family (n_branches x n_groups latent blocks, latent.py): GLA-2/4 and MLRA-2 against from-scratch
transcriptions of their equations (tests/references.py), MLA and MLRA-4 as its (1, 1) and (4, 1) settings, and
one-line errors for sizes the family cannot split. Cached decode == full forward, absorbed == naive and the cache
bytes of every config are in test_attention.py (parametrized over the YAMLs)."""

import pytest
import torch
from references import latent_weights, reference_gla, reference_latent, reference_mlra2
from test_attention import D, H, assert_matches_reference, attention_cfg, make_attention

from latentlm.model.attention.latent import LatentAttention

HD = D // H
REFERENCES = {"gla2": reference_gla, "gla4": reference_gla, "mlra2": reference_mlra2}


@pytest.mark.parametrize(
    ("name", "setting"), [("mla_rope", (1, 1)), ("mlra", (4, 1)), ("gla2", (1, 2)), ("gla4", (1, 4)), ("mlra2", (2, 2))]
)
def test_configs_are_family_settings(name, setting):
    cfg = attention_cfg(name)
    assert (cfg["n_branches"], cfg["n_groups"]) == setting
    assert cfg["rank"] == 0.5 and cfg["twin"] == "mha_rope"


@pytest.mark.parametrize("name", REFERENCES)
@pytest.mark.parametrize(
    "extra", [{}, {"q_rank": 0.25}, {"latent_scale": False}, {"gated": True}],
    ids=["q_from_x", "q_rank", "no_latent_scale", "gated"],
)
@pytest.mark.parametrize("absorb", [True, False])
def test_grouped_latents_match_their_papers_equations(name, extra, absorb):
    """GLA (arXiv 2505.21487) and MLRA-2 (arXiv 2603.02188), full forward and prefill + decode steps, both decode
    paths."""
    attn, cfg = make_attention(name, absorb=absorb, **extra)
    n_blocks = cfg["n_branches"] * cfg["n_groups"]
    q_latent = None if cfg["q_rank"] is None else round(cfg["q_rank"] * D)
    w = latent_weights(attn, H, HD, HD // 2, round(cfg["rank"] * D), q_latent, n_blocks)
    assert w["w_uk"].shape[:2] == (n_blocks, H // cfg["n_groups"])  # each block up-projects its group's heads only
    assert_matches_reference(attn, lambda x: REFERENCES[name](x, w, cfg["latent_scale"]))


@pytest.mark.parametrize(("n_branches", "n_groups"), [(1, 1), (4, 1), (1, 2), (2, 2)])
def test_the_family_is_mla_when_every_block_serves_every_head(n_branches, n_groups):
    """MLA's (1, 1) and MLRA-4's (4, 1) keep the parameters of the module before the family (so their checkpoints
    load) and meet DeepSeek's equations; the grouped settings differ from them (the references tell them apart)."""
    attn = LatentAttention(D, H, 48, n_branches=n_branches, n_groups=n_groups).double()
    nb, c = n_branches * n_groups, D // 2 // (n_branches * n_groups)
    assert {k: tuple(v.shape) for k, v in attn.state_dict().items()} == {
        "wqkv_a.weight": (H * (HD + HD // 2) + D // 2 + HD // 2, D),
        "kv_norm_weight": (nb, c),
        "wkv_b": (nb, H // n_groups * 2 * HD, c),
        "wo.weight": (D, D),
    }
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) / p.size(-1) ** 0.5)
    x = torch.randn(2, 10, D, dtype=torch.float64)
    y = attn(x)
    if n_groups == 1:
        w = latent_weights(attn, H, HD, HD // 2, D // 2, None, n_branches)
        expected = reference_latent(x, w, latent_scale=True)
        assert ((y - expected).norm() / expected.norm()).item() < 2e-7
    else:
        w = latent_weights(attn, H, HD, HD // 2, D // 2, None, nb)
        expected = (reference_gla if n_branches == 1 else reference_mlra2)(x, w, latent_scale=True)
        assert ((y - expected).norm() / expected.norm()).item() < 2e-7


def test_softmax_scale_is_the_qk_width_at_every_setting():
    """1/sqrt(d_nope + rope_dim), never a kernel's default (which would be 1/sqrt(block width + rope_dim))."""
    for n_branches, n_groups in [(1, 1), (4, 1), (1, 2), (1, 4), (2, 2)]:
        attn = LatentAttention(512, 8, 16, n_branches=n_branches, n_groups=n_groups)
        assert attn.scale == (64 + 32) ** -0.5
        assert LatentAttention(512, 8, 16, n_groups=n_groups, rope_in_head=True).scale == 64**-0.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(n_groups=3), r"^n_groups=3 must divide n_head=4$"),
        (dict(n_groups=0), r"^n_groups=0 must divide n_head=4$"),
        (dict(n_branches=3),
         r"^n_branches=3 x n_groups=1 latent blocks must divide the latent dim 32 \(rank x d_model\)$"),
        (dict(n_branches=3, n_groups=2), r"^n_branches=3 x n_groups=2 latent blocks must divide the latent dim 32"),
        (dict(n_branches=0), r"^n_branches=0 x n_groups=1"),
    ],
)
def test_impossible_family_sizes_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        LatentAttention(D, H, 48, **options)
