"""What the benchmark scripts share: where their results go.

Each run writes into a fresh folder under logs/ (relative to where it is launched), so trying a benchmark on a
laptop never replaces the committed results; `--out docs/` writes the files that docs/benchmarks.md shows.
"""

import argparse
import time
from pathlib import Path

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
