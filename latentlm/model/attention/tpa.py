"""Tensor product attention, TPA (Zhang et al. 2025, "Tensor Product Attention Is All You Need", arXiv 2501.06425;
the T6 model).

Every token's queries, keys and values are sums of a few outer products: a head factor A (one number per head)
times a dim factor B (one d_h-wide row), with R_Q, R_K, R_V terms (`rank_q`, `rank_k`, `rank_v`):

    A^Q = W_A^Q x  (H, R_Q),   B^Q = W_B^Q x  (R_Q, d_h);   A^K, B^K and A^V, B^V likewise with R_K, R_V
    B~^Q[r] = RoPE(B^Q[r]),  B~^K[r] = RoPE(B^K[r])      RoPE on every row (T6 Theorem 3.1: the same as rotating q, k)
    q_i = (1/R_Q) sum_r A^Q[i, r] B~^Q[r],  k_i = (1/R_K) sum_r A^K[i, r] B~^K[r],  v_i = (1/R_V) sum_r A^V[i, r] B^V[r]
    o_i = softmax_j(q_i . k_ij / sqrt(d_h)) v_ij,   y = W_o [o_1; ...; o_H]

Cache: the key and value factors A^K, B~^K (rotated), A^V, B^V, (R_K + R_V)(H + d_h) elements per token per layer.

Training, prefill and cached chunks rebuild q, k and v of every head from the factors and run SDPA. A decode step
with `factored` contracts the cached factors directly and never rebuilds K or V (T6 section 5's FlashTPA
contracts B~^Q with B~^K first; here the one new token's q_i is rebuilt, H x d_h, so that both contractions over the
cache are batched matmuls reading each cached factor once):

    q_i = (1/R_Q) sum_r A^Q[i, r] B~^Q[r]                                          the new token's queries
    s_ij = (1/R_K) sum_u A^K_j[i, u] (q_i . B~^K_j[u]) / sqrt(d_h)              (H, S R_K) @ matmul, then A^K
    o_i = (1/R_V) sum_{j, u} (softmax_j(s_ij) A^V_j[i, u]) B^V_j[u]              (H, S R_V) @ (S R_V, d_h)

Per cached position it reads the 288 cached elements (30m model) where the rebuilt form writes and reads K and V
(2 H d_h = 1,024). It costs H (R_K d_h + R_K + R_V + R_V d_h) multiply-adds per query token and cached position
(2,080 at 30m), where rebuilding costs H (R_K + R_V) d_h (2,048) once per cached position: so a prompt's prefill
takes the rebuilt form. `factored: false` decodes by rebuilding too, the readable reference path; tests pin the two
equal. (Three-operand einsums over (S, R_Q, R_K) ran as 8,192 small GEMVs: 10.6 of 12.5 ms a step at batch 64 x
4,096 on an H200, 0.10x mha_rope.)

Tensor parallelism: the head factors A split with the heads, the dim factors B are replicated,
(R_K + R_V)(H / tp + d_h) per device.

Initialisation (T6): xavier-uniform of each factor's weight viewed as (d_model, H, R) or (d_model, R, d_h). The
factor weights are a parameter of this module, not nn.Linear, so the GPT's N(0, 0.02) re-initialisation of
linear layers leaves them alone. W_o takes the GPT's residual-projection init like every variant (T6 zeroes it).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.model.attention.base import Attention, KVCache, causal_attention
from latentlm.model.rope import Rotary


def outer_sum(a: Tensor, b: Tensor) -> Tensor:
    """(1/R) sum_r a[..., h, r] b[..., r, :] for factors a (B, T, H, R) and b (B, T, R, d_h), as (B, H, T, d_h).
    A broadcast product summed over r, not an einsum: with R = 2 or 6 the einsum is a batched matmul of K = R, which
    cuBLAS runs as B x T tiny GEMMs; this is one elementwise-and-reduce kernel that torch.compile fuses."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).mean(dim=-2).transpose(1, 2)


class TensorProductAttention(Attention):
    def __init__(
        self,
        d_model: int,
        n_head: int,
        max_seq_len: int,
        dropout: float = 0.0,
        rank_q: int = 6,
        rank_k: int = 2,
        rank_v: int = 2,
        factored: bool = True,
        rope_base: float = 10_000.0,
    ):
        super().__init__(d_model, n_head, dropout)
        for key, value in (("rank_q", rank_q), ("rank_k", rank_k), ("rank_v", rank_v)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value} must be a whole number of factor terms, at least 1")
        self.ranks = (rank_q, rank_k, rank_v)  # R_Q, R_K, R_V
        self.factored = factored
        H, hd = n_head, self.head_dim
        # Rows [W_A^Q; W_A^K; W_A^V; W_B^Q; W_B^K; W_B^V]: every factor from x in one matmul. A rows are head-major
        # (row i * R + r is A[i, r]), B rows rank-major (row r * d_h + e is B[r, e]).
        self.factor_rows = [H * r for r in self.ranks] + [r * hd for r in self.ranks]
        self.w_ab = nn.Parameter(torch.empty(sum(self.factor_rows), d_model))
        self.wo = nn.Linear(H * hd, d_model, bias=False)
        self.rotary = Rotary(hd, max_seq_len, rope_base)
        self.reset_factors()

    def reset_factors(self) -> None:
        """T6's init: xavier_uniform of W_A viewed as (d, H, R) and of W_B as (d, R, d_h), whose bounds are
        sqrt(6 / (R (H + d))) and sqrt(6 / (d_h (R + d)))."""
        d, H, hd = self.d_model, self.n_head, self.head_dim
        bounds = [math.sqrt(6 / (r * (H + d))) for r in self.ranks]  # A^Q, A^K, A^V
        bounds += [math.sqrt(6 / (hd * (r + d))) for r in self.ranks]  # B^Q, B^K, B^V
        with torch.no_grad():
            for w, bound in zip(self.w_ab.split(self.factor_rows), bounds, strict=True):
                w.uniform_(-bound, bound)

    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        _, rk, rv = self.ranks
        H, hd = self.n_head, self.head_dim
        return {"a_k": (H, rk), "b_k": (rk, hd), "a_v": (H, rv), "b_v": (rv, hd)}

    def kv_cache_elements(self) -> int:
        _, rk, rv = self.ranks
        return (rk + rv) * (self.n_head + self.head_dim)

    def kv_cache_elements_per_device(self, tp: int) -> int:
        # head factors split with the heads (at least one head each), dim factors replicated
        _, rk, rv = self.ranks
        return (rk + rv) * (-(-self.n_head // tp) + self.head_dim)

    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        (rq, rk, rv), H, hd = self.ranks, self.n_head, self.head_dim
        a_q, a_k, a_v, b_q, b_k, b_v = F.linear(x, self.w_ab).split(self.factor_rows, dim=-1)
        a_q, a_k, a_v = a_q.view(B, T, H, rq), a_k.view(B, T, H, rk), a_v.view(B, T, H, rv)
        b_q = self.rotary(b_q.view(B, T, rq, hd), start_pos)  # each row rotated at its token's position
        b_k = self.rotary(b_k.view(B, T, rk, hd), start_pos)
        b_v = b_v.view(B, T, rv, hd)
        if cache is not None:  # (B, S, ...): every cached position
            a_k, b_k, a_v, b_v = cache.append(start_pos, a_k=a_k, b_k=b_k, a_v=a_v, b_v=b_v).values()
        if cache is not None and T == 1 and self.factored:
            y = self._attend_factored(a_q, b_q, a_k, b_k, a_v, b_v)
        else:
            y = self._attend_rebuilt(a_q, b_q, a_k, b_k, a_v, b_v)
        return self.wo(y.reshape(B, T, H * hd))

    def _attend_rebuilt(self, a_q: Tensor, b_q: Tensor, a_k: Tensor, b_k: Tensor, a_v: Tensor, b_v: Tensor) -> Tensor:
        """Rebuild every head's q, k, v as sums of the factors' outer products, then SDPA (the training form)."""
        q, k, v = (outer_sum(a, b) for a, b in ((a_q, b_q), (a_k, b_k), (a_v, b_v)))  # (B, H, T or S, d_h)
        return causal_attention(q, k, v, self.head_dim**-0.5, self.attn_dropout).transpose(1, 2)  # (B, T, H, d_h)

    def _attend_factored(self, a_q: Tensor, b_q: Tensor, a_k: Tensor, b_k: Tensor, a_v: Tensor, b_v: Tensor) -> Tensor:
        """One decode step contracting the cached factors as stored (the module docstring's order)."""
        rq, rk, rv = self.ranks  # T == 1: the newest token sees every cached position, no mask
        B, S, H, _ = a_k.shape
        q = torch.einsum("bhr,brd->bhd", a_q[:, 0], b_q[:, 0]) / rq  # (B, H, d_h)
        qb = q @ b_k.reshape(B, S * rk, -1).transpose(1, 2)  # q_i . B~^K_j[u]: (B, H, S R_K)
        scores = (qb.view(B, H, S, rk) * a_k.permute(0, 2, 1, 3)).sum(-1)  # (B, H, S)
        p = (scores * (self.head_dim**-0.5 / rk)).softmax(dim=-1)
        w = p.unsqueeze(-1) * a_v.permute(0, 2, 1, 3)  # p_ij A^V_j[i, u]: (B, H, S, R_V)
        y = w.reshape(B, H, S * rv) @ b_v.reshape(B, S * rv, -1) / rv  # (B, H, d_h)
        return y.unsqueeze(1)  # (B, 1, H, d_h)
