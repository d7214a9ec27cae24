"""Multi-matrix factorization attention, MFA (Hu et al. 2024, arXiv 2412.19255; the attention of Step-3, arXiv
2507.19427).

Many wide query heads share a single key/value head. Every head is C wide (C = head_width, 2 * d_h by default,
so H * C = 2 * d_model), and queries come through a low-rank path, the "matrix factorization" of the name:

    c^Q = RMSNorm(W_qa x)                    (q_dim,)   q_dim = q_rank * d_model; a learned norm weight, no gain
    q_i = RoPE(W_qb^i c^Q)                   (C,)       RoPE on all C dims
    k = RoPE(W_k x),  v = W_v x              (C,) each, one head shared by all query heads      cached
    o_i = softmax_j(q_i . k_j / sqrt(C)) v_j,   y = W_o [o_1; ...; o_H]    W_o: H * C -> d_model

Cache: k and v, 2 * C elements per token per layer. Decoding is multi-query attention of width C over the cache
as stored (nothing to absorb). Tensor parallelism (as Step-3 serves it in vLLM): query heads and W_o split,
k and v replicated, so every device caches 2 * C whatever the degree.
"""

import math

from torch import Tensor, nn

from latentlm.model.attention.base import Attention, KVCache, causal_attention
from latentlm.model.rope import Rotary


class MultiMatrixFactorizationAttention(Attention):
    def __init__(
        self,
        d_model: int,
        n_head: int,
        max_seq_len: int,
        dropout: float = 0.0,
        head_width: int | None = None,
        q_rank: float = 0.625,
        rope_base: float = 10_000.0,
    ):
        super().__init__(d_model, n_head, dropout)
        self.head_width = 2 * self.head_dim if head_width is None else head_width  # C
        if self.head_width < 2 or self.head_width % 2:
            raise ValueError(f"head_width={self.head_width} must be even and at least 2 (RoPE turns pairs)")
        self.q_dim = round(q_rank * d_model)  # the query latent's width
        if self.q_dim < 1:
            raise ValueError(f"q_rank={q_rank} gives a query latent of {self.q_dim} dims (q_rank x d_model={d_model})")
        C = self.head_width
        self.wqkv_a = nn.Linear(d_model, self.q_dim + 2 * C, bias=False)  # [W_qa; W_k; W_v] in one matmul
        self.q_norm = nn.RMSNorm(self.q_dim, eps=1e-6)
        self.wq_b = nn.Linear(self.q_dim, n_head * C, bias=False)
        self.wo = nn.Linear(n_head * C, d_model, bias=False)
        self.rotary = Rotary(C, max_seq_len, rope_base)
        self.scale = 1 / math.sqrt(C)

    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"k": (self.head_width,), "v": (self.head_width,)}

    def kv_cache_elements(self) -> int:
        return 2 * self.head_width

    def kv_cache_elements_per_device(self, tp: int) -> int:
        return 2 * self.head_width  # the one K/V head is replicated on every device

    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        C = self.head_width
        c_q, k, v = self.wqkv_a(x).split([self.q_dim, C, C], dim=-1)
        q = self.rotary(self.wq_b(self.q_norm(c_q)).view(B, T, self.n_head, C), start_pos)  # (B, T, H, C)
        k = self.rotary(k.unsqueeze(2), start_pos).squeeze(2)  # (B, T, C)
        if cache is not None:
            k, v = cache.append(start_pos, k=k, v=v).values()  # (B, S, C): every cached position
        y = causal_attention(
            q.transpose(1, 2), k.unsqueeze(1), v.unsqueeze(1), self.scale, self.attn_dropout
        )  # (B, H, T, C): one K/V head (views of the cache) for all H query heads
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * C))
