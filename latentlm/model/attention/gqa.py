"""Multi-head, multi-query and grouped-query attention: one class, told apart by the number of KV heads.

MHA (Vaswani et al. 2017): n_kv_heads = n_head. MQA (Shazeer 2019): n_kv_heads = 1.
GQA (Ainslie et al. 2023): query heads in n_kv_heads groups, each group sharing one K/V head:

    q_i = W_q^i x,  k_g = W_k^g x,  v_g = W_v^g x,  o_i = softmax(q_i k_g^T / sqrt(d_h)) v_g,  g = group(i)

Cache: K and V of every KV head, 2 * n_kv_heads * d_h elements per token per layer.
"""

from torch import Tensor, nn

from latentlm.model.attention.base import Attention, KVCache, causal_attention
from latentlm.model.rope import Rotary


class GroupedQueryAttention(Attention):
    def __init__(
        self,
        d_model: int,
        n_head: int,
        max_seq_len: int,
        dropout: float = 0.0,
        n_kv_heads: int | None = None,
        rope: bool = False,
        rope_base: float = 10_000.0,
    ):
        super().__init__(d_model, n_head, dropout)
        self.n_kv_heads = n_head if n_kv_heads is None else n_kv_heads
        if self.n_kv_heads < 1 or n_head % self.n_kv_heads:
            divisors = ", ".join(str(h) for h in range(1, n_head + 1) if n_head % h == 0)
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} does not divide n_head={n_head}; choose one of {{{divisors}}}"
            )
        hd, kv_dim = self.head_dim, self.n_kv_heads * self.head_dim
        self.wqkv = nn.Linear(d_model, d_model + 2 * kv_dim, bias=False)  # q, k and v in one matmul
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.rotary = Rotary(hd, max_seq_len, rope_base) if rope else None

    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"k": (self.n_kv_heads, self.head_dim), "v": (self.n_kv_heads, self.head_dim)}

    def kv_cache_elements(self) -> int:
        return 2 * self.n_kv_heads * self.head_dim

    def kv_cache_elements_per_device(self, tp: int) -> int:
        # KV heads split across devices; with more devices than KV heads each device still holds one
        return 2 * -(-self.n_kv_heads // tp) * self.head_dim

    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        kv_dim = self.n_kv_heads * self.head_dim
        q, k, v = self.wqkv(x).split([self.d_model, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim)
        k, v = k.view(B, T, self.n_kv_heads, self.head_dim), v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.rotary is not None:
            q, k = self.rotary(q, start_pos), self.rotary(k, start_pos)
        if cache is not None:
            k, v = cache.append(start_pos, k=k, v=v).values()  # (B, S, Hkv, hd): every cached position
        y = causal_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.head_dim**-0.5, self.attn_dropout
        )  # (B, H, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.d_model))
