"""Decode benchmark: KV-cache bytes, what fits in memory, and decode speed for every attention variant.

    python scripts/bench_decode.py [--model 30m] [--rank 0.5] [--contexts 512,...,16384] [--batches 1,8,64,256]
        [--variants mha,mla_rope,mla_rope@1.0,...] [--warm-jobs 8] [--out docs/]

A variant is `name[@rank][:naive|:fused]`: an attention config, its rank if not --rank, and ':naive' to decode a
latent variant unabsorbed, ':fused' to decode it absorbed with W_uk folded into the query projection and W_uv into
W_o (LatentAttention.fuse_absorption; not for gated layers). The paper's decode claim (MLA at r = d/2 is 1.4x
faster than full-rank MLA) is `mla_rope` beside `mla_rope@1.0`; for every such pair the script prints the ratio of
their tokens/s.

For each variant (MLA and MLRA with absorbed and naive decoding): the cache bytes per token by formula and
as measured growth of allocated GPU memory, the largest batch x context that fits --budget-gib, and the
time of one decode step (one new token per sequence, attending over `context` cached positions) with random
weights and a random cache, captured in a CUDA graph and replayed. Writes JSON and two PNG plots. Without a GPU
the defaults are CPU-sized: the tiny model, contexts 128-512, batches 1 and 8.

Compilation takes most of a variant's time (an H200 call of 15 variants took ~75 s a variant; batch 1 compiles a
graph of its own). --warm-jobs N compiles every variant first, N processes at once, and the timed pass then reads
the compiled graphs from torch.compile's on-disk cache (2 CPU cores: a 69 s pass became 22 s after a 47 s warm-up).
"""

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from benchlib import add_out_argument, graph_replay_seconds
from omegaconf import OmegaConf

from latentlm.config import compose_train
from latentlm.model import GPT
from latentlm.model.attention.latent import LatentAttention

VARIANTS = "mha,mqa,gqa,mla,mla_rope,mla_rope@1.0,mla_rope:naive,mla_rope_split,mlra,mlra:naive"
# (model, contexts, batches) by default: the paper-sized benchmark on a GPU, one that takes minutes on a CPU.
SIZES = {
    "cuda": {"model": "30m", "contexts": "512,1024,2048,4096,8192,16384", "batches": "1,8,64,256", "plot_batch": 64},
    "cpu": {"model": "tiny", "contexts": "128,256,512", "batches": "1,8", "plot_batch": 8},
}


def parse_variant(variant: str, default_rank: float) -> tuple[str, float, str]:
    """`name[@rank][:naive|:absorbed|:fused]` -> (config name, rank, decode path or '')."""
    match = re.fullmatch(r"(\w+)(?:@([\d.]+))?(?::(naive|absorbed|fused))?", variant)
    if match is None:
        raise ValueError(f"variant {variant!r} is not name[@rank][:naive|:absorbed|:fused]")
    name, rank, path = match.groups()
    return name, float(rank) if rank else default_rank, path or ""


def is_latent(name: str) -> bool:
    """A latent variant has a rank (the project's one rule, latentlm.model.attention) and an absorbed decode path."""
    return "rank" in compose_train([f"attention={name}"]).attention


def build(variant: str, model: str, default_rank: float, max_len: int, device: str, dtype: torch.dtype) -> GPT:
    name, rank, path = parse_variant(variant, default_rank)
    cfg = compose_train([f"model={model}", f"attention={name}", f"rank={rank}", f"model.block_size={max_len}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("_target_")
    model_cfg.pop("_recursive_", None)
    if path:
        model_cfg["attention"]["absorb"] = path != "naive"
    net = GPT(vocab_size=4096, **model_cfg).to(device=device, dtype=dtype).eval()
    if path == "fused":
        for layer in net.modules():
            if isinstance(layer, LatentAttention):
                layer.fuse_absorption()
    return net


def measured_bytes_per_token(net: GPT, device: str, dtype: torch.dtype, batch: int = 4, length: int = 1024) -> float:
    """Growth of GPU memory requested from the caching allocator when a cache of batch x length tokens is
    created, per token (requested bytes: the allocator's block rounding is not the cache's size)."""
    if device != "cuda":
        return sum(c.nbytes for c in net.new_caches(batch, length, device, dtype)) / (batch * length)
    requested = lambda: torch.cuda.memory_stats()["requested_bytes.all.current"]  # noqa: E731
    torch.cuda.synchronize()
    before = requested()
    caches = net.new_caches(batch, length, device, dtype)
    torch.cuda.synchronize()
    grown = requested() - before
    del caches
    return grown / (batch * length)


@torch.inference_mode()
def time_step(
    net: GPT, step_fn: Callable[..., torch.Tensor], batch: int, context: int, device: str, dtype: torch.dtype,
    iters: int,
) -> float:
    """Seconds for one decode step of step_fn (net or its compiled form) at `context` cached positions
    (median of CUDA-graph replays on GPU)."""
    caches = net.new_caches(batch, context + 1, device, dtype)
    for cache in caches:
        for t in cache.tensors.values():
            t.normal_()
    idx = torch.randint(0, net.vocab_size, (batch, 1), device=device)
    step = lambda: step_fn(idx, caches, context)  # noqa: E731
    if device != "cuda":
        step()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        return (time.perf_counter() - start) / iters
    return graph_replay_seconds(step, iters)


def kernels(
    net: GPT, step_fn: Callable[..., torch.Tensor], device: str, dtype: torch.dtype, batch: int, context: int = 4096,
) -> dict:
    """The GPU kernels of one decode step: how many launch, their summed time, and the names of those that take the
    most (which attention kernels run). At batch 1 the count matters: each kernel costs a few microseconds however
    little it does."""
    from torch.profiler import ProfilerActivity, profile

    caches = net.new_caches(batch, context + 1, device, dtype)
    idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
    with torch.inference_mode():
        step_fn(idx, caches, context)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step_fn(idx, caches, context)
    gpu = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]  # kernels, memsets
    events = sorted(gpu, key=lambda e: -e.device_time_total)
    return {"launches": sum(e.count for e in events), "busy_ms": sum(e.device_time_total for e in events) / 1e3,
            "top": [f"{e.key[:90]} ({e.device_time_total / 1e3:.2f} ms)" for e in events[:6]]}


def warm(variants: list[str], args: argparse.Namespace, contexts: list[int], batches: list[int], device: str,
         dtype: torch.dtype) -> None:
    """Compile each variant's decode step at every batch the timed pass runs, in its order (on a GPU kernels()'s
    batches 1 and 64 first), and run it once; nothing is timed or written. Batch 1 is a graph of its own (torch.compile
    specialises sizes of 1), and the graphs that follow it differ from those compiled without it."""
    for variant in variants:
        net = build(variant, args.model, args.rank, max(contexts) + 1, device, dtype)
        step_fn = torch.compile(net, dynamic=True)
        for batch in dict.fromkeys([*([1, 64] if device == "cuda" else []), *batches]):
            caches = net.new_caches(batch, contexts[0] + 1, device, dtype)
            with torch.inference_mode():
                step_fn(torch.zeros(batch, 1, dtype=torch.long, device=device), caches, contexts[0])
        del net, step_fn
        torch._dynamo.reset()


def warm_in_processes(specs: list[str], args: argparse.Namespace) -> None:
    """This script with --warm-only, one process a variant, args.warm_jobs at a time: compilation is host work, so
    the variants compile side by side into the on-disk cache that the timed pass then reads."""
    from concurrent.futures import ThreadPoolExecutor

    shape = ["--model", args.model, "--rank", str(args.rank), "--contexts", args.contexts, "--batches", args.batches]

    def one(variant: str) -> int:
        cmd = [sys.executable, __file__, *shape, "--warm-only", "--variants", variant]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode

    started = time.perf_counter()
    with ThreadPoolExecutor(args.warm_jobs) as pool:
        failed = [v for v, rc in zip(specs, pool.map(one, specs), strict=True) if rc]
    print(f"warmed {len(specs) - len(failed)} of {len(specs)} variants' compiled steps in "
          f"{time.perf_counter() - started:.0f} s ({args.warm_jobs} processes)"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)


def plot(rows: list[dict], out_dir: Path, batch: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        pts = [(r["context"], r["tokens_per_s"]) for r in rows if r["variant"] == v and r["batch"] == batch
               and r.get("tokens_per_s")]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=v)
    ax.set(xscale="log", yscale="log", xlabel="context length (cached tokens)", ylabel="decode tokens/s",
           title=f"Decode throughput, batch {batch}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(out_dir / "decode_tokens_per_s.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    contexts = sorted({r["context"] for r in rows})
    for v in variants:
        per_token = next(r["bytes_per_token"] for r in rows if r["variant"] == v)
        ax.plot(contexts, [per_token * c / 2**20 for c in contexts], marker="o", label=v)
    ax.set(xscale="log", yscale="log", xlabel="context length", ylabel="KV cache per sequence (MiB)",
           title="KV-cache size per sequence (all layers, bf16)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(out_dir / "decode_cache_bytes.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=VARIANTS,
                        help="name[@rank][:naive|:fused], comma separated; ':naive' decodes a latent variant "
                        "unabsorbed, ':fused' absorbed through fused weights")
    for key, default in SIZES["cuda"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(default),
                            help=f"default: {default} ({SIZES['cpu'][key]} without a GPU)")
    parser.add_argument("--rank", type=float, default=0.5, help="rank of the latent variants without @rank")
    parser.add_argument("--budget-gib", type=float, default=40.0, help="memory for the KV cache")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--naive-max-tokens", type=int, default=64 * 8192, help="batch x context cap for :naive")
    parser.add_argument("--append", action="store_true",
                        help="merge into the JSON in --out: re-measure these variants, keep the others (runs in parts)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the decode step (default: on CUDA), as `generate compile=true` does")
    parser.add_argument("--warm-jobs", type=int, default=0, metavar="N",
                        help="first compile every variant's step in N processes at once (no timing), so that the "
                        "timed pass finds the compiled kernels in torch.compile's on-disk cache")
    parser.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)  # one warming process
    add_out_argument(parser, "decode", "bench_decode.json and the plots")
    args = parser.parse_args()
    if args.warm_jobs < 0:
        parser.error(f"--warm-jobs {args.warm_jobs}: give a number of processes (0: no warm-up)")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    defaulted = [key for key in SIZES[device] if getattr(args, key) is None]
    for key in defaulted:
        setattr(args, key, SIZES[device][key])
    if defaulted and device == "cpu":
        print(f"no GPU: --model {args.model} --contexts {args.contexts} --batches {args.batches} "
              "(a CPU-sized benchmark; give them to change it)", flush=True)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    budget = args.budget_gib * 2**30
    compile_step = device == "cuda" if args.compile is None else args.compile
    specs = args.variants.split(",")
    latent = {}
    for v in specs:  # a bad spec fails before any work
        try:
            name, _, path = parse_variant(v, args.rank)
        except ValueError as err:
            parser.error(str(err))
        latent[v] = is_latent(name)
        if path and not latent[v]:
            parser.error(f"variant {v}: only a latent variant (one with a rank) decodes naive, absorbed or fused")
        if path == "fused" and compose_train([f"attention={name}"]).attention.get("gated"):
            parser.error(f"variant {v}: a gated latent layer has no fused form (its gate lies between W_uv and W_o)")
    variants = [v if ":" in v or not latent[v] else f"{v}:absorbed" for v in specs]
    if args.warm_only:
        warm(variants, args, contexts, batches, device, dtype)
        return
    if args.warm_jobs and compile_step:
        warm_in_processes(specs, args)
    rows, summary = [], []
    out = args.out / "bench_decode.json"
    if args.append and out.is_file():  # keep the other variants of an earlier run (same device and settings)
        earlier = json.loads(out.read_text())
        summary = [s for s in earlier["summary"] if s["variant"] not in variants]
        rows = [r for r in earlier["rows"] if r["variant"] not in variants]

    def save() -> None:
        """Written after every variant, so a crash or a timeout keeps what was measured."""
        args.out.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "date": str(date.today()), "command": " ".join(sys.argv), "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "dtype": str(dtype),
            "model": args.model, "rank": args.rank, "compiled": compile_step, "summary": summary, "rows": rows,
        }, indent=2))

    for variant in variants:
        started = time.perf_counter()
        net = build(variant, args.model, args.rank, max(contexts) + 1, device, dtype)
        step_fn = torch.compile(net, dynamic=True) if compile_step else net
        per_token = net.kv_cache_elements() * dtype.itemsize
        measured = measured_bytes_per_token(net, device, dtype)
        name, rank, _ = parse_variant(variant, args.rank)
        rank = rank if is_latent(name) else None
        info = {"variant": variant, "rank": rank, "bytes_per_token": per_token, "measured_bytes_per_token": measured,
                "max_tokens_in_budget": int(budget // per_token), "params": net.num_params()}
        if device == "cuda":
            info["kernels_ctx4096"] = {f"b{b}": kernels(net, step_fn, device, dtype, b) for b in (1, 64)}
        summary.append(info)
        for context in contexts:
            for batch in batches:
                row = {"variant": variant, "context": context, "batch": batch, "bytes_per_token": per_token}
                if per_token * batch * (context + 1) > budget:
                    row["skipped"] = f"cache over the {args.budget_gib:g} GiB budget"
                elif variant.endswith(":naive") and batch * context > args.naive_max_tokens:
                    row["skipped"] = "naive decoding re-expands the whole cache each step: too large"
                else:
                    try:
                        seconds = time_step(net, step_fn, batch, context, device, dtype, args.iters)
                        row.update(ms_per_step=seconds * 1e3, tokens_per_s=batch / seconds)
                    except torch.OutOfMemoryError:
                        row["skipped"] = "out of memory (naive decompression of the whole cache)"
                    if device == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
        del net, step_fn
        torch._dynamo.reset()  # drop this variant's compiled graphs
        info["wall_s"] = time.perf_counter() - started  # where a call's time goes: compile, capture, timing, profile
        print(f"{variant}: {info['wall_s']:.0f} s", flush=True)
        save()

    print(f"\n{device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), {dtype}, "
          f"model={args.model}, rank={args.rank}, compiled step: {compile_step}")
    print("\n| variant | KV bytes/token (formula) | measured | vs mha | max batch x context in "
          f"{args.budget_gib:g} GiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    mha = next((s["bytes_per_token"] for s in summary if s["variant"] == "mha"), None)
    for s in summary:
        ratio = f"{s['bytes_per_token'] / mha:.1%}" if mha else "-"
        print(f"| {s['variant']} | {s['bytes_per_token']:,} | {s['measured_bytes_per_token']:,.0f} | {ratio} | "
              f"{s['max_tokens_in_budget']:,} |")

    def lookup(variant: str, context: int, batch: int) -> dict:
        return next(r for r in rows if r["variant"] == variant and r["context"] == context and r["batch"] == batch)

    for batch in batches:
        print(f"\nDecode tokens/s at batch {batch} (ms per step):\n")
        print("| variant | " + " | ".join(str(c) for c in contexts) + " |")
        print("| --- |" + " ---: |" * len(contexts))
        for s in summary:
            cells = []
            for c in contexts:
                r = lookup(s["variant"], c, batch)
                cells.append(f"{r['tokens_per_s']:,.0f} ({r['ms_per_step']:.2f})" if "tokens_per_s" in r else "-")
            print(f"| {s['variant']} | " + " | ".join(cells) + " |")
    for s in summary:  # a low-rank variant against the same variant at full rank (r = d_model)
        name, rank, path = parse_variant(s["variant"], args.rank)
        full = next((f["variant"] for f in summary if parse_variant(f["variant"], args.rank) == (name, 1.0, path)),
                    None)
        if full is None or rank == 1.0:
            continue
        print(f"\nDecode tokens/s of {s['variant']} (r = {rank:g} d) / {full} (r = d), by batch and context:\n")
        print("| batch | " + " | ".join(str(c) for c in contexts) + " |")
        print("| --- |" + " ---: |" * len(contexts))
        for batch in batches:
            pairs = [(lookup(s["variant"], c, batch), lookup(full, c, batch)) for c in contexts]
            cells = [f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x" if "tokens_per_s" in a and "tokens_per_s" in b
                     else "-" for a, b in pairs]
            print(f"| {batch} | " + " | ".join(cells) + " |")
    if device == "cuda":
        print("\nKernels of one decode step at context 4096 (launches, GPU time; the longest at batch 64):")
        for s in summary:
            b1, b64 = s["kernels_ctx4096"]["b1"], s["kernels_ctx4096"]["b64"]
            print(f"- {s['variant']}: b1 {b1['launches']} in {b1['busy_ms']:.3f} ms, b64 {b64['launches']} in "
                  f"{b64['busy_ms']:.3f} ms: " + "; ".join(b64["top"][:3]))
    save()
    plots = plot(rows, args.out, args.plot_batch)
    print(f"\nwrote {out} and {', '.join(str(p) for p in plots)}")


if __name__ == "__main__":
    main()
