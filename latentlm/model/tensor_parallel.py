"""Tensor-parallel decode of the attention layers (Megatron-style: heads split, one all-reduce after W_o).

Each of `world_size` devices holds a shard of every attention layer and computes the part of the layer's output
that its heads (and latent blocks) contribute, already multiplied by its columns of W_o; one all-reduce sums the
parts. W_o is linear, so the sum over devices is the layer's output: over heads for MHA/GQA, and over heads and
branches for the latent family (the reason MLRA exists: its branches need no communication before W_o).

Latent family (latent.py: n_blocks = n_branches x n_groups blocks, block b = branch * n_groups + group serving
the heads of its group). Blocks are dealt out group-major (group 0's branches first), so a device's heads are
one contiguous range:
- tp <= n_blocks: each device holds n_blocks / tp whole blocks (+ a replica of the rotary key), with the
  up-projections of the heads they serve, the W_q rows and W_o columns of those heads. Either whole head groups
  with every branch (GLA-4 at TP-2: groups {0, 1} and {2, 3}; MLRA-2 at TP-2: group 0's two branches and group
  1's), or a whole group's heads over some of its branches (MLRA-4 at TP-2: branches {0, 1} and {2, 3}, all heads).
- tp > n_blocks: each block is replicated on tp / n_blocks devices, which split its heads (MLA at TP-4: the whole
  latent on every device, 2 of 8 heads each; GLA-2 at TP-4: half the latent, 2 heads each).
So a device caches (n_blocks / tp, or 1) x block width (x 2 with split latents) + rope_dim elements per token,
which is `Attention.kv_cache_elements_per_device(tp)`. A tp the layout cannot divide is refused.

MHA / GQA / MQA: the KV heads split over devices with their query heads; with more devices than KV heads each KV
head is replicated on tp / n_kv_heads devices, which split its query heads.

Everything else (embeddings, norms, MLP, LM head) stays replicated: every device computes it in full on the same
all-reduced activations, so every device ends with the same logits. This measures what tensor parallelism does to
attention (cache bytes and decode speed per device), not a full Megatron model. Inference only (the all-reduce is
not differentiated).
"""

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from latentlm.model.attention import KVCache, causal_attention
from latentlm.model.attention.gqa import GroupedQueryAttention
from latentlm.model.attention.latent import LatentAttention, bias_free_linear
from latentlm.model.gpt import GPT


@dataclass(frozen=True)
class LatentShardPlan:
    """What one device holds of a latent layer: `blocks` (global indices, in the shard's order
    branch * n_groups + group), laid out as `n_branches` x `n_groups`, serving the query `heads`."""

    blocks: list[int]
    n_branches: int
    n_groups: int
    heads: range


def latent_plan(n_branches: int, n_groups: int, n_head: int, rank: int, world_size: int) -> LatentShardPlan:
    """Which latent blocks and heads device `rank` of `world_size` holds (the module docstring gives the rules)."""
    nb, group_heads, tp = n_branches * n_groups, n_head // n_groups, world_size
    if tp <= nb and nb % tp == 0:
        per_device = nb // tp
        if per_device % n_branches == 0:  # whole head groups, every branch of each
            groups = per_device // n_branches
            g0 = rank * groups
            blocks = [branch * n_groups + g0 + g for branch in range(n_branches) for g in range(groups)]
            return LatentShardPlan(blocks, n_branches, groups, range(g0 * group_heads, (g0 + groups) * group_heads))
        if n_branches % per_device == 0:  # one head group, per_device of its branches
            group, first = divmod(rank, n_branches // per_device)
            blocks = [(first * per_device + branch) * n_groups + group for branch in range(per_device)]
            return LatentShardPlan(blocks, per_device, 1, range(group * group_heads, (group + 1) * group_heads))
    elif tp > nb and tp % nb == 0 and group_heads % (tp // nb) == 0:  # each block on tp / nb devices
        copies = tp // nb
        block, part = divmod(rank, copies)  # group-major: block index group * n_branches + branch
        group, branch = divmod(block, n_branches)
        heads = group_heads // copies
        first = group * group_heads + part * heads
        return LatentShardPlan([branch * n_groups + group], 1, 1, range(first, first + heads))
    raise ValueError(
        f"tensor-parallel degree {tp} cannot split n_branches={n_branches} x n_groups={n_groups} latent blocks "
        f"over n_head={n_head} heads: use a tp that divides the {nb} blocks into whole blocks and whole groups, "
        f"or a multiple of {nb} that divides each block's {group_heads} heads"
    )


def gqa_plan(n_kv_heads: int, n_head: int, rank: int, world_size: int) -> tuple[range, range]:
    """The KV heads and query heads device `rank` of `world_size` holds: n_kv_heads / tp KV heads with their
    query heads, or, with more devices than KV heads, one KV head and its share of that head's query heads."""
    per_kv, tp = n_head // n_kv_heads, world_size
    if tp <= n_kv_heads and n_kv_heads % tp == 0:
        kv = n_kv_heads // tp
        return range(rank * kv, (rank + 1) * kv), range(rank * kv * per_kv, (rank + 1) * kv * per_kv)
    if tp > n_kv_heads and tp % n_kv_heads == 0 and per_kv % (tp // n_kv_heads) == 0:
        kv_head, part = divmod(rank, tp // n_kv_heads)
        heads = per_kv // (tp // n_kv_heads)
        first = kv_head * per_kv + part * heads
        return range(kv_head, kv_head + 1), range(first, first + heads)
    raise ValueError(
        f"tensor-parallel degree {tp} cannot split n_kv_heads={n_kv_heads} KV heads of n_head={n_head} query heads: "
        f"use a divisor of {n_kv_heads}, or a multiple of it that divides each KV head's {per_kv} query heads"
    )


class GroupedQueryShard(nn.Module):
    """One device's share of a GroupedQueryAttention layer: the K/V heads `kv_heads` and the query heads `heads`
    that read them, and the W_o columns of those heads; the forward is gqa.py's at the shard's sizes."""

    def __init__(self, attn: GroupedQueryAttention, kv_heads: range, heads: range):
        super().__init__()
        hd, d, n_kv = attn.head_dim, attn.d_model, attn.n_kv_heads
        w_q, w_k, w_v = attn.wqkv.weight.split([d, n_kv * hd, n_kv * hd])
        kv = slice(kv_heads.start * hd, kv_heads.stop * hd)
        self.wqkv = bias_free_linear(torch.cat((w_q[heads.start * hd : heads.stop * hd], w_k[kv], w_v[kv])))
        self.wo = bias_free_linear(attn.wo.weight[:, heads.start * hd : heads.stop * hd])
        self.rotary = attn.rotary
        self.n_head, self.n_kv_heads, self.head_dim = len(heads), len(kv_heads), hd

    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"k": (self.n_kv_heads, self.head_dim), "v": (self.n_kv_heads, self.head_dim)}

    def kv_cache_elements(self) -> int:
        return 2 * self.n_kv_heads * self.head_dim

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        return KVCache(self.cache_shapes(), batch_size, max_len, device=device, dtype=dtype)

    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        H, Hkv, hd = self.n_head, self.n_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        q, k, v = q.view(B, T, H, hd), k.view(B, T, Hkv, hd), v.view(B, T, Hkv, hd)
        if self.rotary is not None:
            q, k = self.rotary(q, start_pos), self.rotary(k, start_pos)
        if cache is not None:
            k, v = cache.append(start_pos, k=k, v=v).values()  # (B, S, Hkv, hd)
        y = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), hd**-0.5)  # (B, H, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * hd))  # this device's part of the layer's output


class TensorParallelAttention(nn.Module):
    """One device's shard of an attention layer (`local`, whose output is already through its W_o columns) and
    the all-reduce that sums the devices' parts into the layer's output. Its cache is `local`'s: this device's
    share only."""

    def __init__(self, local: nn.Module, group: dist.ProcessGroup | None = None):
        super().__init__()
        self.local, self.group = local, group

    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        y = self.local(x, cache, start_pos)
        dist.all_reduce(y, group=self.group)  # sum over devices: heads (and latent branches) meet here
        return y

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        return self.local.new_cache(batch_size, max_len, device, dtype)

    def kv_cache_elements(self) -> int:
        """Elements per token this device caches for the layer."""
        return self.local.kv_cache_elements()


def shard_attention(attn: nn.Module, rank: int, world_size: int) -> nn.Module:
    """The part of `attn` device `rank` of `world_size` computes (before the all-reduce)."""
    if isinstance(attn, LatentAttention):
        plan = latent_plan(attn.n_branches, attn.n_groups, attn.n_head, rank, world_size)
        return attn.shard(plan.blocks, plan.heads, plan.n_branches, plan.n_groups)
    if isinstance(attn, GroupedQueryAttention):
        return GroupedQueryShard(attn, *gqa_plan(attn.n_kv_heads, attn.n_head, rank, world_size))
    raise ValueError(f"tensor-parallel decode has no split for {type(attn).__name__}")


def shard_model(model: GPT, rank: int, world_size: int, group: dist.ProcessGroup | None = None) -> GPT:
    """A copy of `model` whose attention layers are device `rank`'s shards (plus the all-reduce); the rest is
    replicated. Every rank must call it with the same model (same weights) inside an initialised process group."""
    sharded = copy.deepcopy(model)
    for block in sharded.blocks:
        block.attn = TensorParallelAttention(shard_attention(block.attn, rank, world_size), group)
    return sharded


@torch.inference_mode()
def greedy_decode(
    model: GPT, prompt: Tensor, steps: int, caches: list[KVCache] | None = None
) -> tuple[Tensor, Tensor]:
    """Prefill `prompt` (B, T), then `steps - 1` one-token steps, each feeding back the previous greedy token.
    Returns the `steps` greedy tokens (B, steps) and the logits they were taken from (B, steps, V): the prefill's
    last position, then each step's. `caches` default to fresh ones of T + steps positions. A sharded model gives
    the same on every rank (its logits come from all-reduced activations)."""
    B, T = prompt.shape
    if caches is None:
        caches = model.new_caches(B, T + steps, prompt.device, next(model.parameters()).dtype)
    logits = [model(prompt, caches, 0, last_only=True)]
    tokens = [logits[-1][:, -1].argmax(-1, keepdim=True)]
    for pos in range(T, T + steps - 1):
        logits.append(model(tokens[-1], caches, pos))
        tokens.append(logits[-1][:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1), torch.cat(logits, dim=1)
