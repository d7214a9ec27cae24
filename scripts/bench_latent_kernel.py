"""The latent decode kernel alone: how fast it reads the cache, by tile and split, against the GPU's memory bandwidth.

    python scripts/bench_latent_kernel.py [--attention mla_rope] [--rank 0.5] [--model 30m]
        [--shapes 1x4096,64x4096,1x16384,64x16384] [--out docs/]

One layer's absorbed decode attention (latent_decode.attend) of the configured variant (MLA+RoPE at rank 0.5 on the
30m model: one latent block of 256 and a rotary key of 32, shared by 8 query heads), on a random bf16 cache of
batch x positions rows, for every tile (block_n x num_warps x num_stages) and split count: the median of --iters
calls, each a CUDA graph's replay timed by CUDA events. The bytes a call must read are the cache's (batch x positions
x row width x 2) and the queries'; GB/s = those bytes / the time. The memory bandwidth it is compared with is
measured here, by copying a 4 GiB buffer on the device (read + write). Writes bench_latent_kernel.json and prints,
for each shape, the kernel's default settings and the fastest ones tried. A layer's cache at batch 1 x 4096 (2.4 MB)
fits in L2, so that shape can beat the memory bandwidth.
"""

import argparse
import itertools
import json
import math
import sys
import time
from datetime import date
from functools import partial

import torch
from benchlib import add_out_argument, graph_replay_seconds
from hydra.utils import instantiate

from latentlm.config import compose_train
from latentlm.model.attention import latent_decode
from latentlm.model.attention.latent import LatentAttention

TILES = {"block_n": (32, 64, 128), "num_warps": (4, 8), "num_stages": (2, 3)}
SPLITS_PER_SM = (0.5, 1, 2, 4)  # programs (sequences x blocks x splits) per SM; the default aims at 1 (2 for wide rows)


def memory_bandwidth_gbs(gib: int = 4, repeats: int = 10) -> float:
    """Device-to-device copy rate of a `gib` GiB buffer, counting its read and its write (GB/s)."""
    src = torch.empty(gib * 2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * src.numel() * repeats / (start.elapsed_time(end) / 1e3) / 1e9


def latent_layer(attention: str, rank: float, model: str) -> LatentAttention:
    """The first attention layer of the configured model, built on the meta device as the model builds it."""
    cfg = compose_train([f"model={model}", f"attention={attention}", f"rank={rank}"])
    with torch.device("meta"):
        layer = instantiate(cfg.model, vocab_size=1, _convert_="all").blocks[0].attn
    if not isinstance(layer, LatentAttention):
        raise ValueError(f"attention={attention} is not a latent variant (its _target_ is {cfg.attention._target_})")
    return layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", default="mla_rope", help="a latent attention config")
    parser.add_argument("--rank", type=float, default=0.5)
    parser.add_argument("--model", default="30m")
    parser.add_argument("--shapes", default="1x4096,64x4096,1x16384,64x16384", help="batch x cached positions")
    parser.add_argument("--iters", type=int, default=50)
    add_out_argument(parser, "latent_kernel", "bench_latent_kernel.json")
    args = parser.parse_args()
    try:
        shapes = [(int(b), int(s)) for b, s in (shape.split("x") for shape in args.shapes.split(","))]
    except ValueError:
        parser.error(f"--shapes {args.shapes} is not a list of batch x positions such as 1x4096,64x4096")
    try:
        layer = latent_layer(args.attention, args.rank, args.model)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if not torch.cuda.is_available():
        sys.exit("error: bench_latent_kernel.py times a CUDA kernel and needs a CUDA GPU (none here)")
    nb, c, rope, heads = layer.n_blocks, layer.block_dim, layer.rope_dim, layer.group_heads
    key_offset = (layer.n_latents - 1) * layer.latent_dim  # split rows: [c_v | c_k | k_pe]
    width = layer.n_latents * layer.latent_dim + rope
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bandwidth = memory_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth:,.0f} GB/s; {args.attention} r={args.rank}: "
          f"{nb} block(s) of {c}, rotary {rope}, {heads} heads a block, rows of {width}", flush=True)
    rows = []
    for batch, positions in shapes:
        torch.manual_seed(0)
        kv = torch.randn(batch, positions, width, device="cuda", dtype=torch.bfloat16)
        q = torch.randn(batch, nb, heads, c + rope, device="cuda", dtype=torch.bfloat16)
        read = (kv.numel() + q.numel()) * 2
        default_launch = latent_decode.default_launch(batch * nb, positions, sms, c, rope, layer.n_latents == 2)
        split_counts = sorted({default_launch[0]} | {
            max(1, min(math.ceil(f * sms / (batch * nb)), positions // 64)) for f in SPLITS_PER_SM})
        for block_n, warps, stages in itertools.product(*TILES.values()):
            for splits in split_counts:
                call = partial(latent_decode.attend, q, kv, nb, c, rope, layer.scale, splits=splits,
                               block_n=block_n, num_warps=warps, num_stages=stages, key_offset=key_offset)
                seconds = graph_replay_seconds(call, args.iters)  # a graph: without the host's launch cost
                default = (splits, block_n, stages, warps) == (*default_launch, latent_decode.NUM_WARPS)
                rows.append({"batch": batch, "positions": positions, "block_n": block_n, "num_warps": warps,
                             "num_stages": stages, "splits": splits, "default": default, "us": seconds * 1e6,
                             "gb_per_s": read / seconds / 1e9, "of_bandwidth": read / seconds / 1e9 / bandwidth})
        del kv, q
    print("\n| batch x positions | cache MB | settings | us | GB/s | of copy bandwidth |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for batch, positions in shapes:
        mine = [r for r in rows if (r["batch"], r["positions"]) == (batch, positions)]
        best = min(mine, key=lambda r: r["us"])
        for name, r in (("default", next(r for r in mine if r["default"])), ("fastest", best)):
            mb = batch * positions * width * 2 / 1e6
            print(f"| {batch} x {positions:,} | {mb:,.1f} | {name}: block_n {r['block_n']}, warps {r['num_warps']}, "
                  f"stages {r['num_stages']}, splits {r['splits']} | {r['us']:.1f} | {r['gb_per_s']:,.0f} | "
                  f"{r['of_bandwidth']:.0%} |")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_latent_kernel.json"
    path.write_text(json.dumps({
        "date": str(date.today()), "time": time.strftime("%H:%M:%S"), "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(), "copy_bandwidth_gbs": bandwidth, "attention": args.attention,
        "rank": args.rank, "model": args.model, "n_blocks": nb, "block_dim": c, "rope_dim": rope, "heads": heads,
        "rows": rows}, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
