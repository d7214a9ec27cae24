"""Training throughput of every attention variant through the real CLI (Trainer + LightningModule).

    python scripts/bench_train.py [--variants mha,mla_rope] [--rank 0.5] [--out docs/] [overrides ...]

Each variant runs `python -m latentlm.train experiment=bench_train attention=<v>` in its own process and its
summary.json is tabulated: params, tokens/s, ms/step, MFU (against 989.4 TFLOP/s dense bf16 for H100/H200),
the ratio to a bf16 matmul rate measured here, and peak memory. A variant `mha+fused_loss=true` adds the overrides
after each '+' to its own run, to time a training switch against the plain variant. Without a GPU it runs the CPU twin,
experiment=bench_train_smoke (the tiny model, 30 steps a variant), unless --experiment says otherwise.

--nanogpt PATH first times nanoGPT's own model.py from a checkout at PATH (kept outside this repository) at the same
shape and steps, in a process of its own (scripts/bench_plain_loop.py says how); its row comes first, and every
variant gets its ratio to it. --plain-loop mha,... also times those variants' LitGPT stepped by hand, without the
Trainer (rows "mha (plain loop)"): the Trainer's row over that one is what Lightning's loop costs.

--repeats N runs every row N times, round after round (each round every row once, in the same order), and reports
each row's median run with all its runs' tokens/s (`tokens_per_s_runs`): one run a row can be off by 20% on a lent
GPU (mha_rope once took 23.1 ms a step where the calls around it measured 18.9).
"""

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path

import torch
from bench_plain_loop import load_nanogpt
from benchlib import add_out_argument, run_dir

from latentlm.config import group_choices

REPO = Path(__file__).resolve().parent.parent
VARIANTS = "mha,mqa,gqa,mla,mla_rope,mlra"


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float | None:
    """Measured dense bf16 matmul rate (random data, after warm-up), the practical ceiling for MFU."""
    if not torch.cuda.is_available():
        return None
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """`mha+fused_loss=true` -> ("mha", ["fused_loss=true"]): the attention option, then Hydra overrides for this
    variant's run alone ('+' separates them, since ',' separates the variants)."""
    attention, *overrides = spec.split("+")
    if not attention or any("=" not in o for o in overrides):
        raise ValueError(f"variant {spec!r} is not ATTENTION[+KEY=VALUE...], e.g. mha+fused_loss=true")
    return attention, overrides


def run_name(spec: str, rank: float) -> str:
    """The variant's run folder, `mha+fused_loss_true-r0.5`: its spec with every character but letters, digits and
    '.+_-' as '_' (an '=' in hydra.run.dir would not parse, a '/' would make a subfolder)."""
    safe = re.sub(r"[^\w.+-]", "_", spec)
    return f"{safe}-r{rank}"


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the lower one of an even count) and, with more than one run, every run's
    tokens/s as `tokens_per_s_runs`."""
    row = sorted(runs, key=lambda r: r["tokens_per_s"])[(len(runs) - 1) // 2]
    return row if len(runs) == 1 else {**row, "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=VARIANTS,
                        help="attention options, comma-separated; ATTENTION+KEY=VALUE adds overrides to one "
                        "variant, e.g. mha,mha+fused_loss=true")
    parser.add_argument("--rank", type=float, default=0.5)
    parser.add_argument("--experiment",
                        help="the training config (default: bench_train on a GPU, its CPU twin bench_train_smoke "
                        "otherwise)")
    add_out_argument(parser, "train", "bench_train.json")
    parser.add_argument("--runs", type=Path, default=run_dir("train") / "runs",
                        help="the folder for the training runs (default: logs/bench/train/<time>/runs/)")
    parser.add_argument("--nanogpt", type=Path, metavar="PATH",
                        help="a karpathy/nanoGPT checkout: time its model.py at the same shape first, as the reference")
    parser.add_argument("--plain-loop", default="", metavar="VARIANTS",
                        help="also time these variants in a plain PyTorch loop, without the Trainer")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every row this many times, round after round; each row is then its median run, with "
                        "every run's tokens/s beside it")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: every row runs at least once")
    try:
        variants = {spec: parse_variant(spec) for spec in args.variants.split(",")}
    except ValueError as err:
        sys.exit(f"error: {err}")
    plain_loops = [v for v in args.plain_loop.split(",") if v]
    known = group_choices("attention")
    unknown = [a for a in [*(a for a, _ in variants.values()), *plain_loops] if a not in known]
    if unknown:  # before anything runs, in one line
        sys.exit(f"error: no attention config {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.nanogpt is not None:
        try:
            load_nanogpt(args.nanogpt)  # a wrong path fails here, in one line, before anything runs
        except ValueError as err:
            sys.exit(f"error: {err}")
    if args.experiment is None:
        args.experiment = "bench_train" if torch.cuda.is_available() else "bench_train_smoke"
        if args.experiment == "bench_train_smoke":
            print("no GPU: experiment=bench_train_smoke (model=tiny, 30 steps a variant); "
                  "--experiment bench_train runs the GPU benchmark (model=30m)", flush=True)

    matmul = matmul_tflops()
    rows: list[dict] = []

    def save() -> None:
        """Each row's ratios to mha and nanoGPT, and the JSON: written after every row, so a crash or a time-out
        keeps what was measured."""
        mha = next((r["tokens_per_s"] for r in rows if r["variant"] == "mha"), None)
        nanogpt = rows[0]["tokens_per_s"] if rows[0]["variant"] == "nanogpt" else None
        for r in rows[1 if nanogpt else 0:]:
            r["vs_mha"] = r["tokens_per_s"] / mha if mha else None
            r["vs_nanogpt"] = r["tokens_per_s"] / nanogpt if nanogpt else None
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_train.json").write_text(json.dumps({
            "date": str(date.today()), "time": time.strftime("%H:%M:%S"), "command": " ".join(sys.argv),
            "experiment": args.experiment, "matmul_tflops": matmul, "rows": rows}, indent=2))

    def columns(s: dict, ms_per_step: float, kv_elements: int) -> dict:
        """The table's columns from a run's summary (a Trainer run's or a plain loop's)."""
        return {
            "params": s["params"], "tokens_per_s": s["tokens_per_s"], "ms_per_step": ms_per_step, "mfu": s["mfu"],
            "flops_per_token": s["flops_per_token"],
            "matmul_fraction": s["tokens_per_s"] * s["flops_per_token"] / (matmul * 1e12) if matmul else None,
            "peak_memory_gib": s["peak_memory_gib"], "kv_elements_per_token": kv_elements,
            "device": s["device"], "precision": s["precision"],
        }

    def plain_loop(name: str, flag: str, *overrides: str) -> tuple[dict, dict]:
        """bench_plain_loop.py's summary, in a process of its own, and its row."""
        out_dir = (args.runs / name).resolve()
        cmd = [sys.executable, str(REPO / "scripts" / "bench_plain_loop.py"), flag,
               f"--experiment={args.experiment}", f"--out={out_dir}", *args.overrides, *overrides]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
        s = json.loads((out_dir / "summary.json").read_text())
        return s, {**columns(s, s["ms_per_step"], s["kv_elements_per_token"]), "shape": s["shape"],
                   "compiled": s["compiled"], "fused_adamw": s["fused_adamw"]}

    def nanogpt_row(suffix: str) -> dict:
        s, row = plain_loop(f"nanogpt{suffix}", f"--nanogpt={args.nanogpt.resolve()}")
        return {"variant": "nanogpt", "rank": None, **row, "nanogpt": s["nanogpt"], "bias": s["bias"]}

    def plain_loop_row(variant: str, suffix: str) -> dict:
        _, row = plain_loop(f"{variant}-r{args.rank}-plain-loop{suffix}", "--ours", f"attention={variant}",
                            f"rank={args.rank}")
        return {"variant": f"{variant} (plain loop)", "rank": args.rank, **row}

    def trainer_row(variant: str, attention: str, overrides: list[str], suffix: str) -> dict:
        variant_dir = (args.runs / f"{run_name(variant, args.rank)}{suffix}").resolve()  # the runs start in the repo
        cmd = [sys.executable, "-m", "latentlm.train", f"experiment={args.experiment}", f"attention={attention}",
               f"rank={args.rank}", f"hydra.run.dir={variant_dir}", *args.overrides, *overrides]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
        s = json.loads((variant_dir / "summary.json").read_text())
        ms_per_step = 1e3 * s["tokens"] / s["steps"] / s["tokens_per_s"]
        return {"variant": variant, "rank": args.rank, **columns(s, ms_per_step, s["kv_cache"]["elements_per_token"])}

    # One job a row: nanoGPT, the plain loops, the Trainer variants. With --repeats each round runs every job once,
    # in this order, so that a slow spell of the machine falls on every row alike; a row is its median run.
    jobs: dict[str, Callable[[str], dict]] = {"nanogpt": nanogpt_row} if args.nanogpt is not None else {}
    jobs |= {f"{v} (plain loop)": partial(plain_loop_row, v) for v in plain_loops}
    jobs |= {v: partial(trainer_row, v, attention, overrides) for v, (attention, overrides) in variants.items()}
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for name, job in jobs.items():
            runs.setdefault(name, []).append(job(f"-{repeat + 1}" if args.repeats > 1 else ""))
            rows = [median_run(r) for r in runs.values()]
            save()
    print(f"\n{rows[0]['device']}, {rows[0]['precision']}, bf16 matmul measured: "
          f"{matmul:.0f} TFLOP/s\n" if matmul else "\n")
    if rows[0]["variant"] == "nanogpt":
        ref = rows[0]["nanogpt"]
        print(f"nanogpt: {ref['path']} at commit {ref['commit']} (model.py blob {ref['model_py_blob'][:12]})\n")
    print("| variant | params | tokens/s | vs mha | vs nanogpt | ms/step | MFU | of matmul | GFLOP/token | peak GiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"| {r['variant']} | {r['params'] / 1e6:.1f}M | {r['tokens_per_s']:,.0f} | "
              f"{fmt(r.get('vs_mha'), '.2f')} | {fmt(r.get('vs_nanogpt'), '.2f')} | {r['ms_per_step']:.1f} | "
              f"{fmt(r['mfu'], '.1%')} | {fmt(r['matmul_fraction'], '.1%')} | {r['flops_per_token'] / 1e9:.3f} | "
              f"{fmt(r['peak_memory_gib'], '.1f')} |")
    print(f"\nwrote {args.out / 'bench_train.json'}")


if __name__ == "__main__":
    main()
