"""What the benchmark scripts share: where their results go.

Each run writes into a fresh folder under logs/ (relative to where it is launched), so trying a benchmark on a
laptop never replaces the committed results; `--out docs/` writes the files that docs/benchmarks.md shows.
"""

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

STARTED = time.strftime("%Y-%m-%d_%H-%M-%S")


def run_dir(name: str) -> Path:
    """This run's folder: logs/bench/<name>/<time>/."""
    return Path("logs") / "bench" / name / STARTED


def add_out_argument(parser: argparse.ArgumentParser, name: str, files: str) -> None:
    parser.add_argument(
        "--out", type=Path, default=run_dir(name),
        help=f"the folder for {files} (default: logs/bench/{name}/<time>/); --out docs/ replaces the committed "
        "results that docs/benchmarks.md shows",
    )


def graph_replay_seconds(step: Callable[[], object], iters: int, warmup: int = 3) -> float:
    """Median GPU seconds of one `step` on CUDA: run `warmup` times on a side stream (compilation, allocations),
    captured once in a CUDA graph, then `iters` replays each timed by CUDA events; the host's launch cost is out."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]
