"""Grouped-tied attention, GTA (Zadouri, Strauss and Dao 2025, "Hardware-Efficient Attention for Fast Decoding",
arXiv 2505.21487).

The n_head query heads fall into G = n_kv_heads contiguous groups of H / G heads, as in GQA, but each group
caches one tied state u_g of d_h elements that serves as both its key and its value. Positions come from a
rotary key k^R of d_r = rope_dim elements, computed once per token and shared by every head:

    q_i = [q_i^N ; RoPE(q_i^R)]           q_i = W_q^i x, RoPE on its last d_r dims only     (d_h,)
    u_g = W_kv^g x                        no norm, no RoPE                                   (d_h,)  cached
    k^R = RoPE(W_kr x)                    one rotary key for all heads                       (d_r,)  cached
    k_i = [u_g[:d_h - d_r] ; k^R],  v_i = u_g,  g = group(i)
    o_i = softmax_j(q_i . k_ij / sqrt(d_h)) v_ij,   y = W_o [o_1; ...; o_H]

So the first d_h - d_r dims of u are shared by key and value, the last d_r are value-only. Cache:
G * d_h + d_r elements per token per layer (GQA with the same G caches 2 * G * d_h).

Training builds the G group keys [u_g[:d_h - d_r] ; k^R] (one per group, not per head) and runs SDPA with
the heads grouped. A decode step (one new token) never builds keys at all: it reads the cached u and k^R in
place, the score being two dot products,

    s_ij = (q_i^N . u_gj[:d_h - d_r] + RoPE(q_i^R) . k_j^R) / sqrt(d_h),   o_i = sum_j softmax_j(s_ij) u_gj

A cached chunk of several tokens (a prompt's prefill) takes the training form over the cache, where SDPA's
fused kernels never hold the T x S scores.

The cache holds one row a token, [u_1 ... u_G | k^R], the layout of latent attention's [c_1 ... c_n | k_pe]: on a
GPU the decode step is latent attention's split-KV kernel (latent_decode) with each tied state as a latent block of
width d_h and the query [q^N ; 0 ; RoPE(q^R)], the zeros over u's value-only dims. Elsewhere the two dot
products above run as einsums (the reference the kernel is pinned to).

Tensor parallelism: the groups split across devices and k^R is replicated, (G / tp) * d_h + d_r per device
(d_h + d_r once tp > G).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.model.attention import latent_decode
from latentlm.model.attention.base import Attention, KVCache, causal_attention
from latentlm.model.rope import Rotary


class GroupedTiedAttention(Attention):
    def __init__(
        self,
        d_model: int,
        n_head: int,
        max_seq_len: int,
        dropout: float = 0.0,
        n_kv_heads: int = 2,
        rope_dim: int | None = None,
        rope_base: float = 10_000.0,
    ):
        super().__init__(d_model, n_head, dropout)
        hd = self.head_dim
        self.n_kv_heads = n_kv_heads  # G, the number of tied states
        if n_kv_heads < 1 or n_head % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_head={n_head}")
        self.rope_dim = hd // 2 if rope_dim is None else rope_dim  # d_r
        if self.rope_dim % 2 or not 0 < self.rope_dim <= hd:
            raise ValueError(f"rope_dim={self.rope_dim} must be even and in (0, head_dim={hd}]")
        self.nope_dim = hd - self.rope_dim  # the dims of u shared by key and value
        # q (H * d_h), the tied states u (G * d_h) and the rotary key (d_r) in one matmul
        self.wqkv = nn.Linear(d_model, n_head * hd + n_kv_heads * hd + self.rope_dim, bias=False)
        self.wo = nn.Linear(n_head * hd, d_model, bias=False)
        self.rotary = Rotary(self.rope_dim, max_seq_len, rope_base)

    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"kv": (self.n_kv_heads * self.head_dim + self.rope_dim,)}  # [u_1 ... u_G | k^R]

    def kv_cache_elements(self) -> int:
        return self.n_kv_heads * self.head_dim + self.rope_dim

    def kv_cache_elements_per_device(self, tp: int) -> int:
        # tied states split across devices (at least one each), the rotary key replicated
        return -(-self.n_kv_heads // tp) * self.head_dim + self.rope_dim

    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        H, G, hd = self.n_head, self.n_kv_heads, self.head_dim
        q, u, k_pe = self.wqkv(x).split([H * hd, G * hd, self.rope_dim], dim=-1)
        q_nope, q_pe = q.view(B, T, H, hd).split([self.nope_dim, self.rope_dim], dim=-1)
        q_pe = self.rotary(q_pe, start_pos)  # (B, T, H, d_r)
        u = u.view(B, T, G, hd)
        k_pe = self.rotary(k_pe.unsqueeze(2), start_pos).squeeze(2)  # (B, T, d_r): one head shared by all
        if cache is not None:
            kv = cache.append(start_pos, kv=torch.cat((u.flatten(2), k_pe), dim=-1))["kv"]  # (B, S, G * d_h + d_r)
            u, k_pe = kv[..., : G * hd].unflatten(-1, (G, hd)), kv[..., G * hd :]  # (B, S, G, d_h), (B, S, d_r)
        if cache is not None and T == 1 and latent_decode.supported(kv, hd, self.rope_dim):
            y = self._attend_kernel(q_nope, q_pe, kv)
        elif cache is not None and T == 1:
            y = self._attend_tied(q_nope, q_pe, u, k_pe)
        else:
            y = self._attend_grouped(torch.cat((q_nope, q_pe), dim=-1), u, k_pe)
        return self.wo(y.reshape(B, T, H * hd))

    def _attend_grouped(self, q: Tensor, u: Tensor, k_pe: Tensor) -> Tensor:
        """Training form: G group keys [u_g[:d_h - d_r] ; k^R], values u, SDPA with H / G heads a group."""
        B, S, G, _ = u.shape
        k = torch.cat((u[..., : self.nope_dim], k_pe.unsqueeze(2).expand(B, S, G, self.rope_dim)), dim=-1)
        y = causal_attention(
            q.transpose(1, 2), k.transpose(1, 2), u.transpose(1, 2), self.head_dim**-0.5, self.attn_dropout
        )  # (B, H, T, d_h)
        return y.transpose(1, 2)

    def _attend_kernel(self, q_nope: Tensor, q_pe: Tensor, kv: Tensor) -> Tensor:
        """_attend_tied through latent attention's decode kernel: group g is latent block g (key [u_g | k^R],
        value u_g), and its heads' queries are zero over u_g's value-only dims, so each score is _attend_tied's."""
        B, T, H, _ = q_nope.shape  # T == 1
        G, hd = self.n_kv_heads, self.head_dim
        q = torch.cat((F.pad(q_nope, (0, self.rope_dim)), q_pe), dim=-1)  # (B, 1, H, d_h + d_r)
        out = latent_decode.attend(q.view(B, G, H // G, hd + self.rope_dim), kv, G, hd, self.rope_dim, hd**-0.5)
        return out.reshape(B, T, H, hd)  # (B, G, H/G, d_h): head i = g * H/G + j

    def _attend_tied(self, q_nope: Tensor, q_pe: Tensor, u: Tensor, k_pe: Tensor) -> Tensor:
        """One decode step over the cache as it is stored: scores from u's key dims and the shared k^R, values u."""
        B, T, H, _ = q_nope.shape  # T == 1: the newest token sees every cached position, no mask
        G = self.n_kv_heads
        q_nope, q_pe = q_nope.view(B, T, G, H // G, -1), q_pe.view(B, T, G, H // G, -1)  # head i = g * H/G + j
        scores = torch.einsum("btgjn,bsgn->bgjts", q_nope, u[..., : self.nope_dim])
        scores = scores + torch.einsum("btgjr,bsr->bgjts", q_pe, k_pe)  # (B, G, H/G, T, S)
        p = (scores * self.head_dim**-0.5).softmax(dim=-1)
        return torch.einsum("bgjts,bsgd->btgjd", p, u).reshape(B, T, H, self.head_dim)
