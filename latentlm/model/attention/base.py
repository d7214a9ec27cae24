"""The one attention interface every variant implements, its KV cache, and the shared causal kernel."""

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    """Preallocated decode cache of one attention layer: named tensors of shape (B, max_len, *per_token).

    A variant decides what it caches (K and V per KV head, or a latent and a rotary key); the cache only
    stores and hands back views, so its memory is exactly what the variant asked for.
    """

    def __init__(
        self,
        per_token: dict[str, tuple[int, ...]],
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.max_len = max_len
        self.tensors = {
            name: torch.zeros(batch_size, max_len, *shape, device=device, dtype=dtype)
            for name, shape in per_token.items()
        }

    def append(self, start_pos: int, **new: Tensor) -> dict[str, Tensor]:
        """Write new entries (B, T, ...) at positions start_pos.. and return views over positions 0..end."""
        end = start_pos + next(iter(new.values())).size(1)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end}")
        views = {}
        for name, value in new.items():
            self.tensors[name][:, start_pos:end] = value
            views[name] = self.tensors[name][:, :end]
        return views

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float = 0.0) -> Tensor:
    """SDPA over (B, H, T, D) queries and (B, Hkv, S, D) keys where the T queries are the last T of S.

    T == S is training or a fresh prefill (the fused causal kernels apply); T == 1 is a decode step (no mask);
    otherwise a chunk is appended to a cache and the causal mask is offset by S - T.
    """
    T, S = q.size(-2), k.size(-2)
    gqa = q.size(1) != k.size(1)
    if T == S or T == 1:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=T > 1, scale=scale, enable_gqa=gqa
        )
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa
    )


class Attention(nn.Module, ABC):
    """Causal self-attention over (B, T, d_model) with an incremental KV-cache path.

    forward(x) trains (causal over x). forward(x, cache, start_pos) appends x's entries to the cache at
    start_pos and attends over every cached position: a prompt prefill when T > 1, a decode step when T == 1.
    """

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_head:
            divisors = ", ".join(str(h) for h in range(1, d_model + 1) if d_model % h == 0)
            raise ValueError(f"n_head={n_head} does not divide d_model={d_model}; choose n_head in {{{divisors}}}")
        self.d_model, self.n_head, self.head_dim = d_model, n_head, d_model // n_head
        self.dropout = dropout

    @abstractmethod
    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor: ...

    @abstractmethod
    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-token shape of each tensor the decode cache holds."""

    @abstractmethod
    def kv_cache_elements(self) -> int:
        """Cached elements per token for this layer, as the variant's closed-form formula."""

    @abstractmethod
    def kv_cache_elements_per_device(self, tp: int) -> int:
        """Cached elements per token for this layer on one of `tp` tensor-parallel devices (the largest share):
        what a device must hold when the heads (or latent blocks) are split across `tp` devices and whatever
        cannot be split is replicated."""

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        return KVCache(self.cache_shapes(), batch_size, max_len, device=device, dtype=dtype)

    @property
    def attn_dropout(self) -> float:
        return self.dropout if self.training else 0.0
