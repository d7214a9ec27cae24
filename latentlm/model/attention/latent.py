"""Latent attention: MLA (DeepSeek-V2, arXiv 2405.04434) and MLRA (Multi-Head Low-Rank Attention, arXiv 2603.02188).

MLA compresses keys and values of a token into one latent of r = rank * d_model elements:

    c = RMSNorm(W_dkv x)                      (r,)       cached
    k_i = [W_uk^i c ; RoPE(W_kr x)]           per head: d_nope latent-derived dims + rope_dim shared rotary dims
    q_i = [W_uq^i x ; RoPE(W_qr^i x)]         (or from a compressed query latent when q_rank is set)
    v_i = W_uv^i c                            (d_h,)
    o_i = softmax(q_i . k_j / sqrt(d_nope + rope_dim)) v_j,   u = W_o [o_1; ...; o_H]

The rotary key part (decoupled RoPE) is one head shared by all heads and is cached beside c, so the cache is
r + rope_dim elements per token per layer. With rope_dim = 0 this is MLA without RoPE (learned absolute
positions come from the GPT). Because RoPE never touches W_uk c, decoding can absorb W_uk into the query
and apply W_uv after attending over the latents (DeepSeek-V2 appendix C):

    q_i . W_uk^i c_j = (W_uk^i^T q_i) . c_j,      sum_j a_ij W_uv^i c_j = W_uv^i (sum_j a_ij c_j)

`kv_latent` picks what the latent holds. "joint" is the above (DeepSeek). "split" gives keys and values latents
of their own, each r wide and RMSNorm'ed on its own, so the cache is 2r + rope_dim per token per layer (the
count of per-head K and V latents, r / H each, as secondary sources describe the MLA small-LM paper, arXiv
2506.09342); absorption works the same with c_k in the scores and c_v in the weighted sum:

    c_k = RMSNorm(W_dk x),  c_v = RMSNorm(W_dv x),  k_i = [W_uk^i c_k ; RoPE(W_kr x)],  v_i = W_uv^i c_v

`rope_in_head` sets d_nope, the latent-derived width of each query and key head. false (DeepSeek): d_nope = d_h
and the rotary dims are appended, q.k width d_h + rope_dim. true: the rotary dims are carved out of the head,
d_nope = d_h - rope_dim and the q.k width is d_h, as in MHA+RoPE. Values are d_h wide either way.

The latent family (MLRA paper, arXiv 2603.02188, and GLA, arXiv 2505.21487) cuts the latent into
n_blocks = n_branches x n_groups blocks c^(b) of r / n_blocks elements, each RMSNorm'ed on its own. Block
b = beta * n_groups + gamma belongs to branch beta and is up-projected by its own W_uk^(b), W_uv^(b) to keys and
values of head group gamma only, the heads [gamma H / n_groups, (gamma + 1) H / n_groups). Each branch is one
attention over the same queries and the same rotary key; the branch outputs are summed with a 1/sqrt(n_branches)
scale before W_o:

    o_i = sum_beta softmax_j(q_i . [W_uk^(b,i) c_j^(b) ; k_pe_j] / sqrt(d_nope + rope_dim)) W_uv^(b,i) c_j^(b)
          / sqrt(n_branches),        b = beta * n_groups + group(i)

    (n_branches, n_groups) = (1, 1) MLA, (4, 1) MLRA-4, (1, 2) GLA-2, (1, 4) GLA-4, (2, 2) MLRA-2.

The cache is the same r + rope_dim at every setting; what changes is how it splits over tensor-parallel devices
(each device holds its blocks + a replica of the rotary key; latentlm.model.tensor_parallel). With split latents,
c_k and c_v are each cut into n_blocks blocks, block b of both pairing up.
`gated` multiplies the attention output by sigmoid(W_g x) before W_o (the paper's gated variant).

`latent_scale` multiplies each normalised latent (and the normalised query latent) by sqrt(d_model / dim), as
the official MLRA code does, so the up-projected keys keep the scale of a direct projection at any rank. It is
on by default for every latent variant.

Names against DeepSeek-V3's code: `wqkv_a` packs [wq (or wq_a) | wkv_a], where our wkv_a gives [c | k_pe] or
[c_v | c_k | k_pe]; `wkv_b` packs W_uk and W_uv of each head; `rank` is the fraction r / d_model
(DeepSeek's kv_lora_rank is the width r, our `latent_dim`); `nope_dim` is qk_nope_head_dim. MLRA-4's four
blocks are `n_branches` = 4 here; GLA's number of latent heads g is `n_groups`.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.model.attention import latent_decode
from latentlm.model.attention.base import Attention, KVCache, causal_attention
from latentlm.model.rope import Rotary


class LatentAttention(Attention):
    def __init__(
        self,
        d_model: int,
        n_head: int,
        max_seq_len: int,
        dropout: float = 0.0,
        rank: float = 0.5,
        rope_dim: int | None = None,
        rope_in_head: bool = False,
        q_rank: float | None = None,
        kv_latent: str = "joint",
        n_branches: int = 1,
        n_groups: int = 1,
        gated: bool = False,
        latent_scale: bool = True,
        absorb: bool = True,
        absorb_max_tokens: int | None = None,
        rope_base: float = 10_000.0,
    ):
        super().__init__(d_model, n_head, dropout)
        if not 0 < rank <= 1:
            raise ValueError(f"rank={rank} must be in (0, 1]")
        if kv_latent not in ("joint", "split"):
            raise ValueError(f"kv_latent={kv_latent!r} must be 'joint' or 'split'")
        hd = self.head_dim
        self.kv_latent = kv_latent
        self.n_latents = 1 if kv_latent == "joint" else 2  # [c], or [c_v | c_k]: the value latent first
        self.latent_dim = round(rank * d_model)  # r, the width of each latent
        if n_groups < 1 or n_head % n_groups:
            raise ValueError(f"n_groups={n_groups} must divide n_head={n_head}")
        if n_branches < 1 or self.latent_dim % (n_branches * n_groups):
            raise ValueError(
                f"n_branches={n_branches} x n_groups={n_groups} latent blocks must divide the latent dim "
                f"{self.latent_dim} (rank x d_model)"
            )
        self.n_branches, self.n_groups = n_branches, n_groups
        self.n_blocks = n_branches * n_groups  # block b = branch * n_groups + group
        self.group_heads = n_head // n_groups  # the query heads each block serves
        self.block_dim = self.latent_dim // self.n_blocks
        self.branch_scale = n_branches**-0.5  # the branch sum's scale (a tensor-parallel shard keeps the model's)
        self.rope_dim = hd // 2 if rope_dim is None else rope_dim
        if self.rope_dim % 2 or self.rope_dim < 0:
            raise ValueError(f"rope_dim={self.rope_dim} must be even and >= 0")
        if rope_in_head and not 0 < self.rope_dim < hd:
            raise ValueError(f"rope_in_head needs 0 < rope_dim < head_dim={hd}; got rope_dim={self.rope_dim}")
        self.nope_dim = hd - self.rope_dim if rope_in_head else hd  # latent-derived width of a q or k head
        self.qk_dim = self.nope_dim + self.rope_dim
        self.scale = self.qk_dim**-0.5
        self.absorb = absorb
        # Which path a cached chunk of T query tokens takes: absorbed attention pays off for few queries over a long
        # cache, the naive path for a long chunk (a prompt's prefill). The default is the FLOP crossover, derived,
        # not measured. Per layer and cached position, naive decompresses the latent once, 2 r (H / n_groups)
        # (d_nope + d_h), then attends at widths d_nope + rope (q.k) and d_h (v) per query, block and head it
        # serves; absorbed attends at c + rope and c (c = block_dim). The n_blocks x H / n_groups (block, head)
        # pairs cancel, so absorbed costs less while T (2c - d_nope - d_h) < c (d_nope + d_h):
        # up to 85 tokens for MLA at rank 0.5 in the 30m model, and any chunk (the whole context) once
        # 2c <= d_nope + d_h, as for MLRA-4 at rank 0.5. Left out: the absorbed path's per-query products with
        # W_uk and W_uv, which do not grow with the cache.
        c, widths = self.block_dim, self.nope_dim + hd
        crossover = (c * widths - 1) // (2 * c - widths) if 2 * c > widths else max_seq_len
        self.absorb_max_tokens = crossover if absorb_max_tokens is None else absorb_max_tokens

        q_out = n_head * self.qk_dim
        # Everything computed from x in one matmul: the queries (or the query latent), the KV latent(s), the
        # rotary key.
        self.q_in_dim = q_out if q_rank is None else round(q_rank * d_model)
        self.wqkv_a = nn.Linear(d_model, self.q_in_dim + self.n_latents * self.latent_dim + self.rope_dim, bias=False)
        if q_rank is None:
            self.wq_b = None
        else:
            self.q_norm = nn.RMSNorm(self.q_in_dim)
            self.wq_b = nn.Linear(self.q_in_dim, q_out, bias=False)
            self.q_gain = math.sqrt(d_model / self.q_in_dim) if latent_scale else 1.0
        # One RMSNorm per block of each latent.
        self.kv_norm_weight = nn.Parameter(torch.ones(self.n_latents * self.n_blocks, self.block_dim))
        self.kv_gain = math.sqrt(d_model / self.block_dim) if latent_scale else 1.0
        # Per block: W_uk and W_uv of the heads it serves, packed as (n_blocks, H/n_groups * (d_nope [k] + d_h [v]),
        # block_dim), each head's [k | v] rows together.
        self.wkv_b = nn.Parameter(
            torch.empty(self.n_blocks, self.group_heads * (self.nope_dim + hd), self.block_dim).normal_(std=0.02)
        )
        self.wo = nn.Linear(n_head * hd, d_model, bias=False)
        self.wg = nn.Linear(d_model, n_head * hd, bias=False) if gated else None
        self.rotary = Rotary(self.rope_dim, max_seq_len, rope_base) if self.rope_dim else None
        # fuse_absorption's weights (None until it runs; dropped when training resumes): not in checkpoints
        self.register_buffer("w_q_fused", None, persistent=False)
        self.register_buffer("w_o_fused", None, persistent=False)

    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        # One row a token, [c | k_pe] (joint) or [c_v | c_k | k_pe] (split): the value latent leads the row and
        # the key is its last r + rope_dim columns, so absorbed decoding reads both from the cache without copies.
        return {"kv": (self.kv_cache_elements(),)}

    def kv_cache_elements(self) -> int:
        return self.n_latents * self.latent_dim + self.rope_dim

    def kv_cache_elements_per_device(self, tp: int) -> int:
        # latent blocks split across devices, the rotary key replicated; with more devices than blocks each device
        # holds one block (and a share of its heads): MLA (one block) caches all of it on each
        return self.n_latents * self.block_dim * -(-self.n_blocks // tp) + self.rope_dim

    def shard(self, blocks: list[int], heads: range, n_branches: int, n_groups: int) -> "LatentAttention":
        """A copy of this layer narrowed to one tensor-parallel device: the latent `blocks` (global indices, in the
        shard's own block order branch * n_groups + group, `n_branches` x `n_groups` of them) and the query
        `heads` they serve, a contiguous range. It keeps the rows of wqkv_a that make its queries (the query latent
        whole, with q_rank), its blocks of each latent and the rotary key; its blocks' norms and up-projections
        (the rows of its heads); the W_o columns and gate rows of its heads; and the model's branch scale. Its
        output, already through W_o, is this device's part of the layer's: summed over the devices (one
        all-reduce, latentlm.model.tensor_parallel) it is the layer's output. Its cache holds its blocks and the
        rotary key."""
        H, nb, hd, c = len(heads), len(blocks), self.head_dim, self.block_dim
        if n_branches * n_groups != nb or H % n_groups:
            raise ValueError(f"a shard of {nb} blocks in {n_branches} x {n_groups} serving {H} heads is not a layout")
        shard = copy.deepcopy(self)
        shard.w_q_fused = shard.w_o_fused = None  # the shard's own weights would need their own
        shard.n_head, shard.n_branches, shard.n_groups, shard.n_blocks = H, n_branches, n_groups, nb
        shard.group_heads, shard.latent_dim = H // n_groups, nb * c
        qk, r = self.qk_dim, self.latent_dim
        w_q, w_latents, w_kr = self.wqkv_a.weight.split([self.q_in_dim, self.n_latents * r, self.rope_dim])
        if self.wq_b is None:  # queries straight from x: the rows of its heads
            w_q = w_q[heads.start * qk : heads.stop * qk]
        else:  # the query latent is shared by every head: kept whole; wq_b keeps the rows of its heads
            shard.wq_b = bias_free_linear(self.wq_b.weight[heads.start * qk : heads.stop * qk])
        shard.q_in_dim = w_q.size(0)
        rows = [w_latents[(i * self.n_blocks + b) * c : (i * self.n_blocks + b + 1) * c]
                for i in range(self.n_latents) for b in blocks]  # [c_v blocks | c_k blocks] when split
        shard.wqkv_a = bias_free_linear(torch.cat((w_q, *rows, w_kr)))
        norms = [i * self.n_blocks + b for i in range(self.n_latents) for b in blocks]
        shard.kv_norm_weight = nn.Parameter(self.kv_norm_weight[norms].detach().clone())
        w_up = self.wkv_b.view(self.n_blocks, self.group_heads, self.nope_dim + hd, c)
        up = []
        for i, b in enumerate(blocks):  # the heads the shard's group (i % n_groups) asks of block b
            first = heads.start + (i % n_groups) * shard.group_heads - (b % self.n_groups) * self.group_heads
            if not 0 <= first <= self.group_heads - shard.group_heads:
                raise ValueError(f"block {b} does not serve heads {first}.. of the shard's group {i % n_groups}")
            up.append(w_up[b, first : first + shard.group_heads])
        shard.wkv_b = nn.Parameter(torch.stack(up).reshape(nb, -1, c).detach().clone())
        shard.wo = bias_free_linear(self.wo.weight[:, heads.start * hd : heads.stop * hd])
        if self.wg is not None:
            shard.wg = bias_free_linear(self.wg.weight[heads.start * hd : heads.stop * hd])
        return shard

    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        absorbed = cache is not None and self.absorb and self.absorb_max_tokens >= T
        if absorbed and self.w_q_fused is not None:
            return self._decode_fused(x, cache, start_pos)
        latents = self.n_latents * self.latent_dim
        q_in, latent, k_pe = self.wqkv_a(x).split([self.q_in_dim, latents, self.rope_dim], dim=-1)
        q_nope, q_pe = self._queries(q_in, start_pos)  # (B, T, H, d_nope), (B, T, H, rope_dim)
        latent, k_pe = self._latent(latent, k_pe, start_pos)  # (B, T, n_latents * r), (B, T, rope_dim)
        if cache is not None:
            kv = cache.append(start_pos, kv=torch.cat((latent, k_pe), dim=-1))["kv"]  # (B, S, latents + rope)
            latent, k_pe = kv.split([latents, self.rope_dim], dim=-1)
        # y: (B, T, H, d_h)
        y = self._attend_absorbed(q_nope, q_pe, kv) if absorbed else self._attend_naive(q_nope, q_pe, latent, k_pe)
        y = y.reshape(B, T, self.n_head * self.head_dim)
        if self.wg is not None:
            y = y * torch.sigmoid(self.wg(x))
        return self.wo(y)

    def _queries(self, q_in: Tensor, start_pos: int) -> tuple[Tensor, Tensor]:
        B, T, _ = q_in.shape
        q = q_in if self.wq_b is None else self.wq_b(self.q_norm(q_in) * self.q_gain)
        q_nope, q_pe = q.view(B, T, self.n_head, self.qk_dim).split([self.nope_dim, self.rope_dim], dim=-1)
        if self.rotary is not None:
            q_pe = self.rotary(q_pe, start_pos)
        return q_nope, q_pe

    def _latent(self, latent: Tensor, k_pe: Tensor, start_pos: int) -> tuple[Tensor, Tensor]:
        B, T, _ = latent.shape
        blocks = F.rms_norm(latent.view(B, T, -1, self.block_dim), (self.block_dim,))  # every block of each latent
        latent = (blocks * self.kv_norm_weight * self.kv_gain).view(B, T, -1)
        if self.rotary is not None:
            k_pe = self.rotary(k_pe.unsqueeze(2), start_pos).squeeze(2)  # one head shared by all heads
        return latent, k_pe

    def _up_projections(self) -> tuple[Tensor, Tensor]:
        """W_uk (n_branches, n_groups, H/n_groups, d_nope, block_dim) and W_uv (..., d_h, block_dim): views of
        wkv_b, block b = branch * n_groups + group."""
        w = self.wkv_b.view(
            self.n_branches, self.n_groups, self.group_heads, self.nope_dim + self.head_dim, self.block_dim
        )
        return w.split([self.nope_dim, self.head_dim], dim=3)

    def _attend_naive(self, q_nope: Tensor, q_pe: Tensor, latent: Tensor, k_pe: Tensor) -> Tensor:
        """Decompress the latents into per-head K and V (training form) and run SDPA, branches folded into heads.

        Subscripts: p branch, g group, i head within its group (head = g * H/n_groups + i), c block width.
        """
        B, T, H, _ = q_nope.shape
        S, c, r, hd, rope = latent.size(1), self.block_dim, self.latent_dim, self.head_dim, self.rope_dim
        nbr, ng, hg = self.n_branches, self.n_groups, self.group_heads
        w_uk, w_uv = self._up_projections()
        c_v = latent[..., :r].view(B, S, nbr, ng, c)  # joint: c_v and c_k are both c
        c_k = latent[..., -r:].view(B, S, nbr, ng, c)
        k_nope = torch.einsum("bspgc,pgidc->bspgid", c_k, w_uk)  # (B, S, nbr, ng, H/ng, d_nope)
        v = torch.einsum("bspgc,pgidc->bspgid", c_v, w_uv)  # (B, S, nbr, ng, H/ng, d_h)
        k = torch.cat((k_nope, k_pe[:, :, None, None, None, :].expand(B, S, nbr, ng, hg, rope)), dim=-1)
        q = torch.cat((q_nope, q_pe), dim=-1).view(B, T, 1, ng, hg, self.qk_dim).expand(B, T, nbr, ng, hg, -1)
        y = causal_attention(
            q.reshape(B, T, nbr * H, self.qk_dim).transpose(1, 2),
            k.reshape(B, S, nbr * H, self.qk_dim).transpose(1, 2),
            v.reshape(B, S, nbr * H, hd).transpose(1, 2),
            self.scale,
            self.attn_dropout,
        )  # (B, nbr * H, T, d_h)
        if nbr > 1:  # MLRA: sum the branches' outputs
            y = y.reshape(B, nbr, H, T, hd).sum(dim=1)
        if self.branch_scale != 1.0:
            y = y * self.branch_scale
        return y.transpose(1, 2)

    def _attend_absorbed(self, q_nope: Tensor, q_pe: Tensor, kv: Tensor) -> Tensor:
        """Attend over the cached rows directly: W_uk folded into the query, W_uv after.

        Each latent block acts as one key/value head shared by the query heads it serves (FlashMLA's "MQA mode";
        with groups, GLA's per-group MQA): the key of block b is its key-latent block and the shared rotary key,
        its value the value-latent block (the same latent block when joint). A decode step runs the split-KV
        Triton kernel where it applies (see latent_decode), otherwise one SDPA call.
        """
        B, T, H, _ = q_nope.shape
        nb, c, rope = self.n_blocks, self.block_dim, self.rope_dim
        nbr, ng, hg = self.n_branches, self.n_groups, self.group_heads
        w_uk, w_uv = self._up_projections()
        q_latent = torch.einsum("btgid,pgidc->bpgtic", q_nope.view(B, T, ng, hg, -1), w_uk)  # (B, nbr, ng, T, hg, c)
        q_pe = q_pe.view(B, T, 1, ng, hg, rope).permute(0, 2, 3, 1, 4, 5).expand(B, nbr, ng, T, hg, rope)
        q = torch.cat((q_latent, q_pe), dim=-1).view(B, nb, T * hg, c + rope)  # block b's queries: its heads
        out = self._attend_cache(q, kv, T)  # (B, nb, T * H/ng, c)
        y = torch.einsum("bpgtic,pgidc->btgid", out.view(B, nbr, ng, T, hg, c), w_uv)  # summed over branches
        return y.reshape(B, T, H, self.head_dim) * self.branch_scale

    def _attend_cache(self, q: Tensor, kv: Tensor, T: int) -> Tensor:
        """Each block's absorbed queries (B, nb, T * H/ng, c + rope) over the cache: the Triton kernel for a decode
        step where it applies (a split row's key latent lies r columns further), else one SDPA call."""
        if T == 1 and latent_decode.supported(kv, self.block_dim, self.rope_dim):
            key_offset = (self.n_latents - 1) * self.latent_dim
            return latent_decode.attend(q, kv, self.n_blocks, self.block_dim, self.rope_dim, self.scale,
                                        key_offset=key_offset)
        return self._sdpa_over_cache(q, kv, T)

    @torch.no_grad()
    def fuse_absorption(self) -> None:
        """Fold W_uk into the query projection and W_uv (with the branch scale) into W_o, as the DeepSeek-V2 paper
        describes for inference (section 2.1.2), so that an absorbed step makes every block's queries in one matmul
        and leaves through one: two batched matmuls fewer a layer. The fused weights are computed here (in fp32 at
        least) from the current ones (call it again after changing them; `train()` drops them), and used by every
        absorbed step after it:

            W_q~[(b, i), :c] = W_uk^(b,i)^T W_q^(i, nope),  W_q~[(b, i), c:] = W_q^(i, rope)    (b's heads i)
            W_o~[:, (b, i)]  = W_o^(i) W_uv^(b,i) / sqrt(n_branches)

        W_q is wqkv_a's query rows (which W_q~ replaces in one matmul with the latent's rows) or, with a query
        latent, wq_b. The gate of a gated layer sits between W_uv and W_o, so it has no fused form."""
        if self.wg is not None:
            raise ValueError("a gated latent layer cannot fold W_uv into W_o (the gate lies between them)")
        nbr, ng, hg, rope, hd = self.n_branches, self.n_groups, self.group_heads, self.rope_dim, self.head_dim
        dtype = torch.promote_types(self.wo.weight.dtype, torch.float32)  # products of 16-bit weights in fp32
        w_uk, w_uv = (w.to(dtype) for w in self._up_projections())  # (nbr, ng, hg, d_nope | d_h, c)
        w_q = (self.wqkv_a.weight[: self.q_in_dim] if self.wq_b is None else self.wq_b.weight).to(dtype)
        w_nope, w_pe = w_q.view(ng, hg, self.qk_dim, -1).split([self.nope_dim, rope], dim=2)
        q_latent = torch.einsum("pgidc,gids->pgics", w_uk, w_nope)  # (nbr, ng, hg, c, q source)
        w_q_fused = torch.cat((q_latent, w_pe.expand(nbr, ng, hg, rope, -1)), dim=3).flatten(0, 3)
        if self.wq_b is None:  # one matmul makes the fused queries, the latent(s) and the rotary key
            w_q_fused = torch.cat((w_q_fused, self.wqkv_a.weight[self.q_in_dim :].to(dtype)))
        w_o = self.wo.weight.to(dtype).view(-1, ng, hg, hd)
        w_o_fused = torch.einsum("mgid,pgidc->mpgic", w_o, w_uv).flatten(1) * self.branch_scale
        self.w_q_fused, self.w_o_fused = (w.to(self.wo.weight.dtype) for w in (w_q_fused, w_o_fused))

    def train(self, mode: bool = True) -> "LatentAttention":
        if mode:  # fused weights go stale as soon as the weights train
            self.w_q_fused = self.w_o_fused = None
        return super().train(mode)

    def _decode_fused(self, x: Tensor, cache: KVCache, start_pos: int) -> Tensor:
        """An absorbed step through fuse_absorption's weights: (B, T, d_model) -> (B, T, d_model)."""
        B, T, _ = x.shape
        nb, hg, c, rope = self.n_blocks, self.group_heads, self.block_dim, self.rope_dim
        latents, q_width = self.n_latents * self.latent_dim, nb * hg * (c + rope)
        if self.wq_b is None:
            q, latent, k_pe = F.linear(x, self.w_q_fused).split([q_width, latents, rope], dim=-1)
        else:
            q_in, latent, k_pe = self.wqkv_a(x).split([self.q_in_dim, latents, rope], dim=-1)
            q = F.linear(self.q_norm(q_in) * self.q_gain, self.w_q_fused)
        q_latent, q_pe = q.view(B, T, nb * hg, c + rope).split([c, rope], dim=-1)
        if self.rotary is not None:
            q_pe = self.rotary(q_pe, start_pos)
        q = torch.cat((q_latent, q_pe), dim=-1).view(B, T, nb, hg, c + rope).transpose(1, 2)
        latent, k_pe = self._latent(latent, k_pe, start_pos)
        kv = cache.append(start_pos, kv=torch.cat((latent, k_pe), dim=-1))["kv"]  # (B, S, latents + rope)
        out = self._attend_cache(q.reshape(B, nb, T * hg, c + rope), kv, T)  # (B, nb, T * hg, c)
        return F.linear(out.view(B, nb, T, hg, c).transpose(1, 2).reshape(B, T, nb * hg * c), self.w_o_fused)

    def _sdpa_over_cache(self, q: Tensor, kv: Tensor, T: int) -> Tensor:
        """SDPA with the heads folded into the query length: one call reads the cache, without copies when
        there is one block (more blocks concatenate each with the rotary key)."""
        B, nb, TH, _ = q.shape
        S, c, r, rope = kv.size(1), self.block_dim, self.latent_dim, self.rope_dim
        key = kv[..., (self.n_latents - 1) * r :]  # (B, S, r + rope): [c_k | k_pe], or the whole joint row
        if nb == 1:
            k = key.unsqueeze(1)  # (B, 1, S, r + rope): a view of the cache
        else:
            c_k, k_pe = key.split([r, rope], dim=-1)
            k = torch.cat((c_k.view(B, S, nb, c), k_pe.unsqueeze(2).expand(B, S, nb, rope)), dim=-1)
            k = k.transpose(1, 2)  # (B, nb, S, c + rope)
        v = kv[..., :r].view(B, S, nb, c).transpose(1, 2)  # (B, nb, S, c): c_v (or c), a view of the cache
        mask = None
        if T > 1:  # query row t * (heads per block) + h is the token at position S - T + t
            position = torch.arange(T, device=kv.device).repeat_interleave(TH // T) + (S - T)
            mask = torch.arange(S, device=kv.device) <= position[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)


def bias_free_linear(weight: Tensor) -> nn.Linear:
    """A bias-free nn.Linear holding a copy of `weight` (out_features, in_features)."""
    layer = nn.Linear(weight.size(1), weight.size(0), bias=False, device="meta")
    layer.weight = nn.Parameter(weight.detach().clone())
    return layer
