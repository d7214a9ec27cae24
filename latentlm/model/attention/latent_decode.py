"""A split-KV (FlashDecoding) Triton kernel for one decode step of absorbed latent attention (MLA, MLRA, GLA; GTA too).

In absorbed decoding every query head attends over the same cached rows [latent | rotary key], so the cache is
one key/value head shared by all heads (FlashMLA's "MQA mode"). For MLA+RoPE the key is 288 wide and the value
256 (the latent part of the same row); no flash/cuDNN SDPA kernel takes unequal widths, and the generic
fallback reads the cache several times slower than the memory allows. This kernel reads each cached row once
for all heads (a split row [c_v | c_k | k_pe], separate key and value latents, has its key block key_offset
columns after its value block; the joint row's key block is its value block):

    program (sequence b, latent block n, split s) loops over its share of the cached positions j:
        score[h, j] = (q_latent[h] . ck_j[block n] + q_pe[h] . k_rope_j) * scale  (H_PAD x BLOCK_N, tl.dot)
        online softmax over j;  acc[h] += p[h, j] cv_j[block n]                      (the value is the latent)
    then a second kernel merges the splits by their log-sum-exp.

Used for T == 1 steps on CUDA with bf16/fp16 caches; `supported` says when. A width that is not a power of two
(the 124m model's 384-wide latent, MLRA-4's 96-wide blocks) is padded to the next one inside the kernel, its extra
columns masked out of every load and store. Everything else (CPU, prefill chunks) takes the SDPA path, which the
tests pin this kernel against (on GPU, and on CPU through Triton's interpreter).
"""

import math
import os
from functools import cache

import torch
from torch import Tensor

# The default launch (scripts/bench_latent_kernel.py times every tile and split against it). Chosen from that script's
# H200 run (docs/bench_latent_kernel.json: MLA+RoPE at 30m, 288-wide rows, 4 shapes x 96 settings): 3 stages beat 2
# at every shape; about one program per SM beat two (batch 64: 2 splits, not 5; batch 1: 64-132 splits of 64-128
# positions, not 16 of 256); 128-position tiles beat 64 where a split is long (batch 64: 150 vs 170 us at 16,384
# positions) and lost where it is short (batch 1). Rows wider than that (full-rank MLA, split latents, the 124m
# model's 384-wide latent padded to 512) keep the launch they were measured with: a 128 x 544 bf16 tile is 139 KB,
# and three in flight may not fit the 227 KB of shared memory a program has on an H100/H200.
BLOCK_N, LONG_BLOCK_N = 64, 128  # cached positions per inner-loop tile; the long tile from LONG_SPLIT positions a split
LONG_SPLIT = 1024
NUM_WARPS, NUM_STAGES = 4, 3
MEASURED_ROW = 288  # the widest tiled row (padded latent tiles + rotary key) the launch above was measured at
WIDE_ROW_LAUNCH = 64, 2  # wide rows: block_n, num_stages, with two programs per SM and no split under 256 positions


def default_launch(
    rows: int, positions: int, sms: int, block_dim: int, rope_dim: int, split_rows: bool = False,
) -> tuple[int, int, int]:
    """(splits, block_n, num_stages) for `rows` (sequence, latent block) pairs over `positions` cached positions on
    `sms` SMs, each position's tiles a block (two for split rows, key and value) and the rotary key, padded: about one
    program (row, split) per SM but no split shorter than one tile, and the long tile for long splits; wide rows as
    they were measured."""
    row_width = padded(block_dim) * (1 + split_rows) + (padded(rope_dim) if rope_dim else 0)
    if row_width > MEASURED_ROW:
        return max(1, min(math.ceil(2 * sms / rows), positions // 256)), *WIDE_ROW_LAUNCH
    splits = max(1, min(sms // rows, math.ceil(positions / BLOCK_N)))
    return splits, LONG_BLOCK_N if positions >= LONG_SPLIT * splits else BLOCK_N, NUM_STAGES


def padded(width: int) -> int:
    """The kernel's tile width for `width` columns: the next power of two, at least 16 (tl.dot's smallest)."""
    return max(16, 1 << (width - 1).bit_length())


def supported(kv: Tensor, block_dim: int, rope_dim: int) -> bool:
    """Whether `attend` runs for this cache: CUDA (or Triton's interpreter), 16-bit, rows contiguous."""
    on_device = kv.is_cuda or (kv.device.type == "cpu" and _interpreting())
    return on_device and block_dim > 0 and kv.dtype in (torch.bfloat16, torch.float16) and kv.stride(-1) == 1 \
        and _triton()


@cache
def _triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@torch.library.custom_op("latentlm::latent_decode", mutates_args=())
def attend(
    q: Tensor, kv: Tensor, n_blocks: int, block_dim: int, rope_dim: int, scale: float, splits: int | None = None,
    block_n: int | None = None, num_warps: int = NUM_WARPS, num_stages: int | None = None, key_offset: int = 0,
) -> Tensor:
    """Softmax attention of one query token per sequence over every cached row.

    q: (B, n_blocks, H, block_dim + rope_dim), the absorbed queries of each latent block: the H heads it serves
    (every head for MLA and MLRA, the n_head / n_groups heads of its group for GLA and MLRA-2).
    kv: (B, S, key_offset + n_blocks * block_dim + rope_dim), the cache; block n's value is c_n (columns
    n * block_dim...), its key [ck_n | k_pe] with ck_n key_offset columns further (0: the joint row, ck_n = c_n;
    the split row [c_v | c_k | k_pe] has key_offset = n_blocks * block_dim).
    splits, block_n, num_stages: how many parts the positions are cut into, the tile (positions per inner-loop step,
    a power of two >= 16) and Triton's pipeline depth; None: `default_launch`'s. num_warps: Triton's warps.
    Returns (B, n_blocks, H, block_dim) in q's dtype.
    A torch.library custom op, so torch.compile treats the kernels as one opaque call and fuses around it.
    """
    B, nb, H, width = q.shape
    S = kv.size(1)
    latent_dim = key_offset + n_blocks * block_dim  # the rotary key's first column
    assert nb == n_blocks and width == block_dim + rope_dim and kv.size(2) == latent_dim + rope_dim
    q = q.reshape(B * nb, H, width).contiguous()
    if None in (splits, block_n, num_stages):
        sms = torch.cuda.get_device_properties(kv.device).multi_processor_count if kv.is_cuda else 1
        default_splits, default_block_n, default_stages = default_launch(B * nb, S, sms, block_dim, rope_dim,
                                                                         split_rows=key_offset != 0)
        splits = default_splits if splits is None else splits
        block_n = default_block_n if block_n is None else block_n
        num_stages = default_stages if num_stages is None else num_stages
    per_split = math.ceil(S / splits / block_n) * block_n
    splits = math.ceil(S / per_split)  # every split non-empty
    parts = torch.empty(B * nb, splits, H, block_dim, device=q.device, dtype=torch.float32)
    lse = torch.empty(B * nb, splits, H, device=q.device, dtype=torch.float32)
    attend_kernel, merge_kernel = _kernels()
    h_pad = max(16, 1 << (H - 1).bit_length())
    attend_kernel[(B * nb, splits)](
        q, kv, parts, lse,
        q.stride(0), q.stride(1), kv.stride(0), kv.stride(1),
        parts.stride(0), parts.stride(1), parts.stride(2), lse.stride(0), lse.stride(1),
        S, per_split, nb, latent_dim, key_offset, scale * 1.4426950408889634,  # log2(e): the kernel uses exp2
        H=H, H_PAD=h_pad, C=block_dim, C_PAD=padded(block_dim), R=rope_dim, R_PAD=padded(rope_dim) if rope_dim else 0,
        BLOCK_N=block_n, SPLIT=key_offset != 0, num_warps=num_warps, num_stages=num_stages,
    )
    out = torch.empty(B * nb, H, block_dim, device=q.device, dtype=q.dtype)
    merge_kernel[(B * nb, H)](
        parts, lse, out, parts.stride(0), parts.stride(1), parts.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), splits, SPLITS_PAD=max(2, 1 << (splits - 1).bit_length()), C=block_dim,
        C_PAD=padded(block_dim),
    )
    return out.view(B, nb, H, block_dim)


@attend.register_fake
def _(q: Tensor, kv: Tensor, n_blocks: int, block_dim: int, rope_dim: int, scale: float, splits: int | None = None,
      block_n: int | None = None, num_warps: int = NUM_WARPS, num_stages: int | None = None, key_offset: int = 0):
    B, nb, H, _ = q.shape
    return q.new_empty(B, nb, H, block_dim)


@cache
def _kernels():
    """Defined on first use, so that importing latentlm needs no Triton (CPU installs, CI)."""
    import triton
    import triton.language as tl

    @triton.jit
    def latent_decode_kernel(
        Q, KV, O, LSE,
        stride_qb, stride_qh, stride_kvb, stride_kvs,
        stride_ob, stride_os, stride_oh, stride_lb, stride_ls,
        S, per_split, n_blocks, latent_dim, key_offset, scale_log2,
        H: tl.constexpr, H_PAD: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, R: tl.constexpr,
        R_PAD: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    ):
        row = tl.program_id(0)  # sequence b, latent block n: row = b * n_blocks + n
        split = tl.program_id(1)
        b, blk = row // n_blocks, row % n_blocks
        heads = tl.arange(0, H_PAD)
        head_ok = heads < H  # heads padded to 16 rows, the smallest tl.dot
        c = tl.arange(0, C_PAD)
        c_ok = c < C  # columns past the block's width: zeros in the query, never read from the cache
        q_ptr = Q + row * stride_qb + heads[:, None] * stride_qh
        q_lat = tl.load(q_ptr + c[None, :], mask=head_ok[:, None] & c_ok[None, :], other=0.0)  # (H_PAD, C_PAD)
        if R > 0:
            r = tl.arange(0, R_PAD)
            r_ok = r < R
            q_pe = tl.load(q_ptr + C + r[None, :], mask=head_ok[:, None] & r_ok[None, :], other=0.0)  # (H_PAD, R_PAD)

        m = tl.full((H_PAD,), float("-inf"), tl.float32)  # running max of scores (log2 units)
        l = tl.zeros((H_PAD,), tl.float32)  # running sum of exp2(score - m)
        acc = tl.zeros((H_PAD, C_PAD), tl.float32)
        kv_ptr = KV + b.to(tl.int64) * stride_kvb  # a large cache (B x S x width > 2^31 elements) overflows int32
        for n0 in range(split * per_split, (split + 1) * per_split, BLOCK_N):  # per_split: a multiple of BLOCK_N
            n = n0 + tl.arange(0, BLOCK_N)
            n_ok = n < S  # the last split's tail; every split's first position is < S
            row_ptr = kv_ptr + n[:, None] * stride_kvs + blk * C + c[None, :]
            row_ok = n_ok[:, None] & c_ok[None, :]
            c_j = tl.load(row_ptr, mask=row_ok, other=0.0)  # the value block (and the joint key block)
            if SPLIT:  # noqa: SIM108 (a constexpr branch, as Triton compiles it): a split row's key block
                ck_j = tl.load(row_ptr + key_offset, mask=row_ok, other=0.0)
            else:
                ck_j = c_j
            s = tl.dot(q_lat, tl.trans(ck_j))  # (H_PAD, BLOCK_N)
            if R > 0:
                k_pe = tl.load(kv_ptr + n[:, None] * stride_kvs + latent_dim + r[None, :],
                               mask=n_ok[:, None] & r_ok[None, :], other=0.0)
                s += tl.dot(q_pe, tl.trans(k_pe))
            s = tl.where(n_ok[None, :], s * scale_log2, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(c_j.dtype), c_j)
            m = m_new

        o_ptr = O + row * stride_ob + split * stride_os + heads[:, None] * stride_oh + c[None, :]
        tl.store(o_ptr, acc / l[:, None], mask=head_ok[:, None] & c_ok[None, :])
        tl.store(LSE + row * stride_lb + split * stride_ls + heads, m + tl.log2(l), mask=head_ok)

    @triton.jit
    def merge_kernel(
        PARTS, LSE, OUT, stride_pb, stride_ps, stride_ph, stride_lb, stride_ls, stride_ob, stride_oh,
        splits, SPLITS_PAD: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr,
    ):
        """out[row, h] = sum over splits of softmax(lse)[split] * parts[row, split, h], in q's dtype."""
        row, h = tl.program_id(0), tl.program_id(1)
        sp = tl.arange(0, SPLITS_PAD)
        sp_ok = sp < splits
        lse = tl.load(LSE + row * stride_lb + sp * stride_ls + h, mask=sp_ok, other=float("-inf"))
        w = tl.exp2(lse - tl.max(lse, axis=0))
        w = w / tl.sum(w, axis=0)
        c = tl.arange(0, C_PAD)
        c_ok = c < C
        parts = tl.load(PARTS + row * stride_pb + sp[:, None] * stride_ps + h * stride_ph + c[None, :],
                        mask=sp_ok[:, None] & c_ok[None, :], other=0.0)
        out = tl.sum(w[:, None] * parts, axis=0)
        tl.store(OUT + row * stride_ob + h * stride_oh + c, out.to(OUT.dtype.element_ty), mask=c_ok)

    return latent_decode_kernel, merge_kernel
