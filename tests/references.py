"""Independent references for the attention variants, written from the papers' equations.

Plain matmuls, one head (and one latent block) at a time, a hand-written causal softmax and rotary; nothing here
imports latentlm. The tests load a module's weights into these (`gqa_weights`, `latent_weights` are the only code
that knows how a module packs its parameters) and compare outputs in float64.
"""

import math

import torch
from torch import Tensor


def rotary(x: Tensor, base: float = 10_000.0, start: int = 0) -> Tensor:
    """RoFormer's rotation of x (B, T, dim) at positions start..: the pair (x_i, x_{i + dim/2}) turns by the
    angle position * base^(-2i/dim), as a complex number times e^(i angle) (the rotate-half pairing of GPT-NeoX)."""
    half = x.size(-1) // 2
    freq = base ** (-2 * torch.arange(half, dtype=torch.float64) / x.size(-1))
    angle = torch.arange(start, start + x.size(1), dtype=torch.float64)[:, None] * freq  # (T, half)
    turned = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((turned.real, turned.imag), dim=-1)


def causal_softmax(scores: Tensor) -> Tensor:
    """Softmax over keys (last dim) of scores (..., T, T), each query seeing itself and the keys before it."""
    T = scores.size(-1)
    future = torch.arange(T)[None, :] > torch.arange(T)[:, None]
    scores = scores.masked_fill(future, float("-inf"))
    e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def rms_norm(x: Tensor, gain: Tensor, eps: float = 0.0) -> Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * gain


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """One head: softmax(q k^T * scale) v over (B, T, dim) tensors, causally."""
    return causal_softmax(q @ k.transpose(-1, -2) * scale) @ v


def reference_gqa(x: Tensor, w: dict[str, Tensor], n_head: int, n_kv_heads: int, rope: bool) -> Tensor:
    """MHA / GQA / MQA (Vaswani et al. 2017; Ainslie et al. 2023): the K/V heads repeated to one per query head
    (query head i reads K/V head i // (n_head / n_kv_heads)), then every head attends on its own."""
    hd = x.size(-1) // n_head
    q, k, v = x @ w["w_q"].T, x @ w["w_k"].T, x @ w["w_v"].T
    k_heads = [k[..., j * hd : (j + 1) * hd] for j in range(n_kv_heads) for _ in range(n_head // n_kv_heads)]
    v_heads = [v[..., j * hd : (j + 1) * hd] for j in range(n_kv_heads) for _ in range(n_head // n_kv_heads)]
    outs = []
    for i in range(n_head):
        q_i, k_i = q[..., i * hd : (i + 1) * hd], k_heads[i]
        if rope:
            q_i, k_i = rotary(q_i), rotary(k_i)
        outs.append(attend(q_i, k_i, v_heads[i], 1 / math.sqrt(hd)))
    return torch.cat(outs, dim=-1) @ w["w_o"].T


def reference_latent(x: Tensor, w: dict[str, Tensor], latent_scale: bool) -> Tensor:
    """MLA (DeepSeek-V2, arXiv 2405.04434, eqs. 9-19) and MLRA's block sum (arXiv 2603.02188):

        c = W_dkv x,  c_b = RMSNorm_b(block b of c) [x sqrt(d / block width) with latent_scale]
        k_i^b = [W_uk^{b,i} c_b ; RoPE(W_kr x)],   v_i^b = W_uv^{b,i} c_b
        q_i = [W_uq^i s ; RoPE(W_qr^i s)],  s = x, or RMSNorm(W_dq x) [x sqrt(d / its width)] with a query latent
        o_i = sum_b softmax(q_i . k_i^b / sqrt(d_h + d_rope)) v_i^b / sqrt(n_blocks)
        u = W_o [o_1; ...; o_H]   (times sigmoid(W_g x) before W_o when gated)

    MLA is the case of one block. The weight shapes give the sizes: w_uk is (n_blocks, H, d_h, block width).
    """
    d = x.size(-1)
    n_blocks, n_head, hd, width = w["w_uk"].shape
    rope_dim = w["w_kr"].size(0)
    gain = lambda n: math.sqrt(d / n) if latent_scale else 1.0  # noqa: E731
    s = x if "w_dq" not in w else rms_norm(x @ w["w_dq"].T, w["q_norm"]) * gain(w["w_dq"].size(0))
    c = x @ w["w_dkv"].T
    k_pe = rotary(x @ w["w_kr"].T)  # one rotary key, shared by every head
    blocks = [rms_norm(c[..., b * width : (b + 1) * width], w["kv_norm"][b]) * gain(width) for b in range(n_blocks)]
    outs = []
    for i in range(n_head):
        q = torch.cat((s @ w["w_uq"][i].T, rotary(s @ w["w_qr"][i].T)), dim=-1)
        o = sum(
            attend(q, torch.cat((c_b @ w["w_uk"][b, i].T, k_pe), dim=-1), c_b @ w["w_uv"][b, i].T,
                   1 / math.sqrt(hd + rope_dim))
            for b, c_b in enumerate(blocks)
        )
        outs.append(o / math.sqrt(n_blocks))
    o = torch.cat(outs, dim=-1)
    if "w_g" in w:
        o = o * torch.sigmoid(x @ w["w_g"].T)
    return o @ w["w_o"].T


def reference_gta(x: Tensor, w: dict[str, Tensor], n_head: int, n_kv_heads: int) -> Tensor:
    """GTA (arXiv 2505.21487): G tied states u_g, each the value of its H / G query heads and, in its first
    d_h - d_r dims, their key; the key's last d_r dims are one rotary key shared by every head:

        k_i = [u_g[:d_h - d_r] ; RoPE(W_kr x)],  v_i = u_g,  q_i = [q_i[:d_h - d_r] ; RoPE(q_i[d_h - d_r:])]
        o_i = softmax(q_i . k_i / sqrt(d_h)) v_i,   y = W_o [o_1; ...; o_H]
    """
    hd = x.size(-1) // n_head
    rope_dim = w["w_kr"].size(0)
    q, u, k_pe = x @ w["w_q"].T, x @ w["w_u"].T, rotary(x @ w["w_kr"].T)
    outs = []
    for i in range(n_head):
        g = i // (n_head // n_kv_heads)  # the group of head i
        q_i, u_g = q[..., i * hd : (i + 1) * hd], u[..., g * hd : (g + 1) * hd]
        q_i = torch.cat((q_i[..., : hd - rope_dim], rotary(q_i[..., hd - rope_dim :])), dim=-1)
        k_i = torch.cat((u_g[..., : hd - rope_dim], k_pe), dim=-1)
        outs.append(attend(q_i, k_i, u_g, 1 / math.sqrt(hd)))
    return torch.cat(outs, dim=-1) @ w["w_o"].T


def reference_mfa(x: Tensor, w: dict[str, Tensor], n_head: int) -> Tensor:
    """MFA (arXiv 2412.19255): H query heads of width C from a normalised low-rank query, one shared K/V head:

        c = RMSNorm(W_qa x) (eps 1e-6),  q_i = RoPE(W_qb^i c),  k = RoPE(W_k x),  v = W_v x
        o_i = softmax(q_i . k / sqrt(C)) v,   y = W_o [o_1; ...; o_H]
    """
    C = w["w_k"].size(0)
    c = rms_norm(x @ w["w_qa"].T, w["q_norm"], eps=1e-6)
    k, v = rotary(x @ w["w_k"].T), x @ w["w_v"].T
    outs = [attend(rotary(c @ w["w_qb"][i * C : (i + 1) * C].T), k, v, 1 / math.sqrt(C)) for i in range(n_head)]
    return torch.cat(outs, dim=-1) @ w["w_o"].T


def reference_tpa(x: Tensor, w: dict[str, Tensor], n_head: int) -> Tensor:
    """TPA (T6, arXiv 2501.06425, eq. 3.1): each head's q, k, v as a mean of outer products of a head factor A and
    a dim factor B, then RoPE on q_i and k_i (T6 rotates the B rows instead, equal by its Theorem 3.1):

        q_i = RoPE((1/R_Q) sum_r A^Q[i, r] B^Q[r]),   A^Q = W_A^Q x (H, R_Q),  B^Q = W_B^Q x (R_Q, d_h)
        k_i = RoPE((1/R_K) sum_r A^K[i, r] B^K[r]),   v_i = (1/R_V) sum_r A^V[i, r] B^V[r]
        o_i = softmax(q_i . k_i / sqrt(d_h)) v_i,   y = W_o [o_1; ...; o_H]
    """
    hd = x.size(-1) // n_head

    def head(name: str, i: int) -> Tensor:  # (B, T, d_h): head i's q, k or v
        a, b = x @ w[f"w_a{name}"].T, x @ w[f"w_b{name}"].T  # (B, T, H * R), (B, T, R * d_h)
        rank = b.size(-1) // hd
        return sum(a[..., i * rank + r, None] * b[..., r * hd : (r + 1) * hd] for r in range(rank)) / rank

    outs = [attend(rotary(head("q", i)), rotary(head("k", i)), head("v", i), 1 / math.sqrt(hd)) for i in range(n_head)]
    return torch.cat(outs, dim=-1) @ w["w_o"].T


def grouped_latent_heads(x: Tensor, w: dict[str, Tensor], branch: list[int], latent_scale: bool) -> list[Tensor]:
    """One GLA attention (arXiv 2505.21487, as the MLRA paper trains it): the per-head outputs o_i, read from the
    latent blocks `branch` = [b_0, ..., b_{g-1}], block b_gamma serving head group gamma:

        [c^(0) ... c^(n-1) | k~R] = W_dkv x,  c^(b) <- RMSNorm_b(c^(b)) [x sqrt(d / block width)],  k^R = RoPE(W_kr x)
        head i is in group gamma = floor(i g / H), its block b = b_gamma and its index in the group j = i - gamma H / g:
        k_i = [W_uk^(b, j) c^(b) ; k^R],   v_i = W_uv^(b, j) c^(b)
        o_i = softmax(q_i . k_i / sqrt(d_h + d_r)) v_i

    w_uk is (n_blocks, H / g, d_h, block width): per block, the up-projection of the heads it serves.
    """
    d = x.size(-1)
    _, heads_per_block, hd, width = w["w_uk"].shape
    n_head, g = w["w_uq"].size(0), len(branch)
    assert heads_per_block * g == n_head
    rope_dim = w["w_kr"].size(0)
    gain = math.sqrt(d / width) if latent_scale else 1.0
    s = x if "w_dq" not in w else rms_norm(x @ w["w_dq"].T, w["q_norm"]) * (
        math.sqrt(d / w["w_dq"].size(0)) if latent_scale else 1.0)
    c = x @ w["w_dkv"].T
    k_pe = rotary(x @ w["w_kr"].T)  # one rotary key, shared by every head and every group
    outs = []
    for i in range(n_head):
        gamma = i * g // n_head
        b, j = branch[gamma], i - gamma * heads_per_block
        c_b = rms_norm(c[..., b * width : (b + 1) * width], w["kv_norm"][b]) * gain
        q = torch.cat((s @ w["w_uq"][i].T, rotary(s @ w["w_qr"][i].T)), dim=-1)
        k = torch.cat((c_b @ w["w_uk"][b, j].T, k_pe), dim=-1)
        outs.append(attend(q, k, c_b @ w["w_uv"][b, j].T, 1 / math.sqrt(hd + rope_dim)))
    return outs


def output_projection(x: Tensor, o: Tensor, w: dict[str, Tensor]) -> Tensor:
    """u = W_o o, times sigmoid(W_g x) first when gated."""
    if "w_g" in w:
        o = o * torch.sigmoid(x @ w["w_g"].T)
    return o @ w["w_o"].T


def reference_gla(x: Tensor, w: dict[str, Tensor], latent_scale: bool) -> Tensor:
    """GLA-g: the latent in g blocks, block gamma serving head group gamma; y = W_o [o_0; ...; o_{H-1}]."""
    g = w["w_uk"].size(0)
    return output_projection(x, torch.cat(grouped_latent_heads(x, w, list(range(g)), latent_scale), dim=-1), w)


def reference_mlra2(x: Tensor, w: dict[str, Tensor], latent_scale: bool) -> Tensor:
    """MLRA-2 (arXiv 2603.02188): 4 latent blocks; branch A is GLA-2 over blocks 0 and 1, branch B over blocks 2 and
    3, both with the same queries and rotary key; y = W_o [(o^A_i + o^B_i) / sqrt(2)]."""
    assert w["w_uk"].size(0) == 4
    branch_a = grouped_latent_heads(x, w, [0, 1], latent_scale)
    branch_b = grouped_latent_heads(x, w, [2, 3], latent_scale)
    o = torch.cat([(a + b) / math.sqrt(2) for a, b in zip(branch_a, branch_b, strict=True)], dim=-1)
    return output_projection(x, o, w)


# How latentlm packs its parameters: the only place the references meet the modules.


def gqa_weights(attn: torch.nn.Module, d: int, n_kv_heads: int, hd: int) -> dict[str, Tensor]:
    """wqkv stacks [W_q; W_k; W_v] (heads contiguous within each)."""
    w_q, w_k, w_v = attn.wqkv.weight.split([d, n_kv_heads * hd, n_kv_heads * hd])
    return {"w_q": w_q, "w_k": w_k, "w_v": w_v, "w_o": attn.wo.weight}


def latent_weights(
    attn: torch.nn.Module, n_head: int, hd: int, rope_dim: int, latent: int, q_latent: int | None, n_blocks: int
) -> dict[str, Tensor]:
    """wqkv_a stacks [queries (or W_dq); W_dkv; W_kr]; queries are per head [W_uq^i; W_qr^i]; wkv_b holds, per
    block and each head it serves (all H, or the H / n_groups of its group), [W_uk^{b,i}; W_uv^{b,i}]."""
    q_rows = n_head * (hd + rope_dim) if q_latent is None else q_latent
    w_queries, w_dkv, w_kr = attn.wqkv_a.weight.split([q_rows, latent, rope_dim])
    w = {"w_dkv": w_dkv, "w_kr": w_kr, "kv_norm": attn.kv_norm_weight, "w_o": attn.wo.weight}
    if q_latent is not None:
        w.update(w_dq=w_queries, q_norm=attn.q_norm.weight)
        w_queries = attn.wq_b.weight
    w["w_uq"], w["w_qr"] = w_queries.view(n_head, hd + rope_dim, -1).split([hd, rope_dim], dim=1)
    w["w_uk"], w["w_uv"] = attn.wkv_b.view(n_blocks, -1, 2 * hd, latent // n_blocks).split(hd, dim=2)
    if attn.wg is not None:
        w["w_g"] = attn.wg.weight
    return w


def gta_weights(attn: torch.nn.Module, d: int, n_kv_heads: int, hd: int, rope_dim: int) -> dict[str, Tensor]:
    """wqkv stacks [W_q; W_u; W_kr] (heads, then tied states, contiguous)."""
    w_q, w_u, w_kr = attn.wqkv.weight.split([d, n_kv_heads * hd, rope_dim])
    return {"w_q": w_q, "w_u": w_u, "w_kr": w_kr, "w_o": attn.wo.weight}


def mfa_weights(attn: torch.nn.Module, q_dim: int, C: int) -> dict[str, Tensor]:
    """wqkv_a stacks [W_qa; W_k; W_v]; wq_b's rows are the heads, C each."""
    w_qa, w_k, w_v = attn.wqkv_a.weight.split([q_dim, C, C])
    return {"w_qa": w_qa, "q_norm": attn.q_norm.weight, "w_qb": attn.wq_b.weight, "w_k": w_k, "w_v": w_v,
            "w_o": attn.wo.weight}


def tpa_weights(attn: torch.nn.Module, n_head: int, hd: int, ranks: tuple[int, int, int]) -> dict[str, Tensor]:
    """w_ab stacks [W_A^Q; W_A^K; W_A^V; W_B^Q; W_B^K; W_B^V]: A rows head-major (head i, term r), B rows
    term-major (term r, dim e)."""
    rows = [n_head * r for r in ranks] + [r * hd for r in ranks]
    w_aq, w_ak, w_av, w_bq, w_bk, w_bv = attn.w_ab.split(rows)
    return {"w_aq": w_aq, "w_ak": w_ak, "w_av": w_av, "w_bq": w_bq, "w_bk": w_bk, "w_bv": w_bv, "w_o": attn.wo.weight}
