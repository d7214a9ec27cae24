"""Tensor-parallel decode benchmark: per-device KV-cache bytes and decode tokens/s of attention variants sharded over
the GPUs of one host (latentlm.model.tensor_parallel: latent blocks or KV heads split, one all-reduce per layer).

    torchrun --nproc_per_node 2 scripts/bench_tp_decode.py [--variants mla_rope,mlra,gla2,gqa] [--batches 1,64]
        [--contexts 4096,8192,16384,32768,65536] [--model 30m] [--iters 20] [--out docs/]
    python scripts/bench_tp_decode.py [--nproc 2]   # without torchrun: spawns --nproc processes itself

A variant is bench_decode.py's `name[@rank][:naive]`. For each variant, batch and context, every rank builds the
same model (seed 0, bf16 on GPU), keeps its shard (shard_model), fills a cache of context + 1 positions with random
numbers, and times one decode step (one new token per sequence attending over `context` cached positions): on GPU
the step, all-reduces included, is captured in a CUDA graph (eager if the capture fails; the row says which) and
replayed --iters times; the median over replays, the slowest rank's, gives ms/step and tokens/s (batch / step).
The step is not torch.compiled, so compare these rows with each other rather than with bench_decode.py's.
Cache bytes per token on one device are measured from the rank's real cache tensors (all layers) and listed beside
the formula, kv_cache_elements_per_device(tp) x layers x bytes per element. With more than one rank, the step's
collectives alone (one all-reduce of its (batch, 1, d_model) activations a layer) are timed the same way
(allreduce_alone_ms): the share of the step the interconnect takes. (A profiler's NCCL kernel time, which files of
2026-12-01 hold as allreduce_ms, is no measure of it: an all-reduce kernel starts on one GPU and waits there for the
other's, so it counts the ranks' skew.)
Embeddings, norms and MLPs are replicated on every rank (tensor_parallel.py).

Without a GPU the defaults are a gloo smoke that runs in seconds: the tiny model, 2 processes, contexts 64 and 128,
batches 1 and 4, 3 steps. Rank 0 writes bench_tp_decode_tp<N>.json into --out (N: the number of processes),
so runs at several TP degrees can share a folder; scripts/tp_decode_table.py tables and plots such a folder.
"""

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import date
from functools import partial

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_decode import build, parse_variant
from benchlib import add_out_argument
from torch import Tensor

from latentlm.model.tensor_parallel import shard_model

VARIANTS = "mla_rope,mlra,gla2,gla4,mlra2,gqa"
SIZES = {  # defaults: the paper-sized benchmark on GPUs, a smoke on a CPU
    "cuda": {"model": "30m", "contexts": "4096,8192,16384,32768,65536", "batches": "1,64", "iters": 20},
    "cpu": {"model": "tiny", "contexts": "64,128", "batches": "1,4", "iters": 3},
}


@torch.inference_mode()
def median_seconds(step: Callable[[], object], device: str, iters: int) -> tuple[float, bool]:
    """Seconds of one call of `step` (median over iters, then the slowest rank's) and whether a CUDA graph ran it."""
    graph = None
    if device.startswith("cuda"):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: Triton compiles, NCCL connects
                step()
        torch.cuda.current_stream().wait_stream(stream)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        except RuntimeError as err:  # e.g. a collective this build cannot capture: time eager steps instead
            print(f"rank {dist.get_rank()}: CUDA graph capture failed ({str(err)[:120]}); timing eager steps")
            graph = None
            torch.cuda.synchronize()
    else:
        step()
    times = []
    for _ in range(iters):
        dist.barrier()
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            if graph is not None:
                graph.replay()
            else:
                step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    median = torch.tensor(sorted(times)[len(times) // 2], dtype=torch.float64, device=device)
    dist.all_reduce(median, op=dist.ReduceOp.MAX)
    return median.item(), graph is not None


def all_reduces(x: Tensor, layers: int) -> None:
    """The collectives of one decode step alone: one all-reduce of the step's activations a layer."""
    for _ in range(layers):
        dist.all_reduce(x)


def run(rank: int, world_size: int, args: argparse.Namespace) -> None:
    """One rank: every variant, context and batch; rank 0 prints the rows and writes the JSON."""
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if args.cuda else "cpu"
    if args.cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if args.cuda else "gloo", rank=rank, world_size=world_size,
                            device_id=torch.device(device) if args.cuda else None)
    dtype = torch.bfloat16 if args.cuda else torch.float32
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    try:
        for variant in args.variants.split(","):
            torch.manual_seed(0)  # the same weights on every rank
            full = build(variant, args.model, args.rank, max(contexts) + 1, device, dtype)
            elements = full.blocks[0].attn.kv_cache_elements_per_device(world_size)
            formula = elements * len(full.blocks) * dtype.itemsize
            net = shard_model(full, rank, world_size)
            del full
            for context in contexts:
                for batch in batches:
                    row = {"variant": variant, "tp": world_size, "batch": batch, "context": context,
                           "cache_elements_per_device": elements, "cache_bytes_per_token_per_device": formula}
                    if formula * batch * (context + 1) > args.budget_gib * 2**30:
                        row["skipped"] = f"cache over the {args.budget_gib:g} GiB budget per device"
                        rows.append(row)
                        continue
                    caches = net.new_caches(batch, context + 1, device, dtype)
                    for cache in caches:
                        for t in cache.tensors.values():
                            t.normal_()
                    held = sum(t.numel() * t.element_size() for cache in caches for t in cache.tensors.values())
                    row["measured_cache_bytes_per_token_per_device"] = held / (batch * (context + 1))
                    idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
                    seconds, graphed = median_seconds(partial(net, idx, caches, context), device, args.iters)
                    row.update(ms_per_step=seconds * 1e3, tokens_per_s=batch / seconds, cuda_graph=graphed)
                    if world_size > 1:
                        x = torch.zeros(batch, 1, net.wte.embedding_dim, device=device, dtype=dtype)
                        reduce_s, _ = median_seconds(partial(all_reduces, x, len(net.blocks)), device,
                                                     args.iters)
                        row["allreduce_alone_ms"] = reduce_s * 1e3
                    del caches
                    if args.cuda:
                        torch.cuda.empty_cache()
                    rows.append(row)
                    if rank == 0:
                        print(json.dumps(row), flush=True)
            del net
        if rank == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            out = args.out / f"bench_tp_decode_tp{world_size}.json"
            out.write_text(json.dumps({
                "date": str(date.today()), "command": " ".join(sys.argv), "tp": world_size,
                "device": torch.cuda.get_device_name(device) if args.cuda else "cpu", "dtype": str(dtype),
                "model": args.model, "rank": args.rank, "rows": rows,
            }, indent=2))
            print(f"wrote {out}")
    finally:
        dist.destroy_process_group()


def spawned(rank: int, world_size: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    run(rank, world_size, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=VARIANTS, help=f"name[@rank][:naive], comma separated ({VARIANTS})")
    for key, default in SIZES["cuda"].items():
        parser.add_argument(f"--{key}", type=type(default), help=f"default: {default} ({SIZES['cpu'][key]} on a CPU)")
    parser.add_argument("--rank", type=float, default=0.5, help="rank of the latent variants without @rank")
    parser.add_argument("--nproc", type=int, help="processes to spawn without torchrun (default: GPUs, or 2)")
    parser.add_argument("--budget-gib", type=float, default=100.0, help="cache memory per device")
    add_out_argument(parser, "tp_decode", "bench_tp_decode_tp<N>.json")
    args = parser.parse_args()
    args.cuda = torch.cuda.is_available()
    for key, default in SIZES["cuda" if args.cuda else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    for variant in args.variants.split(","):  # a bad spec fails before any process starts
        try:
            parse_variant(variant, args.rank)
        except ValueError as err:
            parser.error(str(err))
    if "RANK" in os.environ:  # under torchrun
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    nproc = args.nproc or (torch.cuda.device_count() if args.cuda else 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(spawned, args=(nproc, port, args), nprocs=nproc)


if __name__ == "__main__":
    main()
