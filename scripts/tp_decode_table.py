"""Tables and a plot of tensor-parallel decode from a folder of bench_tp_decode.py results (one file a TP degree):

    python scripts/tp_decode_table.py docs/tp_decode/30m [--baseline mla_rope]

Reads every bench_tp_decode_tp<N>.json in the folder (one model; N = 1, 2, 4, ...) and prints, for each batch, a
markdown table with a row per variant and context and, for each TP degree: the cache bytes per token one device
holds, decode tokens/s, the speed-up over TP-1 of the same variant, and the ratio to --baseline at the same TP degree
(MLRA-4 / MLA is the MLRA paper's claim). Where a file timed the step's all-reduces alone, their share of the step
is listed too. Writes the tables into the folder as tp_decode.md, and tp_decode_tokens_per_s.png: tokens/s against
context, one line per variant and TP degree. Files hold what each call measured; rows a call skipped (over its
memory budget) show as "-".
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

PLOT = "tp_decode_tokens_per_s.png"
TABLE = "tp_decode.md"


def read_folder(folder: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Every measured row of the folder's files (a `tp` column from each file) and the files' headers."""
    paths = sorted(folder.glob("bench_tp_decode_tp*.json"))
    if not paths:
        raise SystemExit(f"error: {folder} holds no bench_tp_decode_tp<N>.json (scripts/bench_tp_decode.py --out)")
    files = [json.loads(p.read_text()) for p in paths]
    if len({f["model"] for f in files}) > 1:
        raise SystemExit(f"error: {folder} mixes models {sorted({f['model'] for f in files})}: one folder a model")
    rows = pd.DataFrame([{**r, "tp": f["tp"]} for f in files for r in f["rows"]])
    return rows, files


def table(rows: pd.DataFrame, batch: int, baseline: str) -> str:
    """One batch's markdown table: variant x context rows, per TP degree bytes, tokens/s, vs TP-1, vs baseline."""
    tps = sorted(int(tp) for tp in rows.tp.unique())
    shares = "allreduce_alone_ms" in rows
    rate = rows.set_index(["variant", "context", "tp", "batch"]).tokens_per_s.dropna()

    def columns(tp: int) -> list[str]:
        more_than_one = tp > 1
        return [f"TP-{tp} bytes/token/device", f"TP-{tp} tokens/s"] + [f"TP-{tp} vs TP-1"] * more_than_one + [
            f"TP-{tp} vs {baseline}"] + [f"TP-{tp} all-reduce share"] * (shares and more_than_one)

    def cells(row: pd.Series, tp: int) -> list[str]:
        own = row.tokens_per_s
        if pd.isna(own):  # skipped: over the call's memory budget
            return [f"{row.cache_bytes_per_token_per_device:,}"] + ["-"] * (len(columns(tp)) - 1)
        one, base = rate.get((row.variant, row.context, 1, batch)), rate.get((baseline, row.context, tp, batch))
        out = [f"{row.cache_bytes_per_token_per_device:,}", f"{own:,.0f}"]
        if tp > 1:
            out.append(f"{own / one:.2f}x" if one else "-")
        out.append(f"{own / base:.2f}x" if base else "-")
        if shares and tp > 1:
            ms = row.get("allreduce_alone_ms")
            out.append(f"{ms / row.ms_per_step:.0%}" if pd.notna(ms) else "-")
        return out

    header = ["variant", "context"] + [c for tp in tps for c in columns(tp)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (variant, context), group in rows[rows.batch == batch].groupby(["variant", "context"], sort=False):
        out = [variant, f"{context:,}"]
        for tp in tps:
            mine = group[group.tp == tp]
            out += cells(mine.iloc[0], tp) if len(mine) else ["-"] * len(columns(tp))
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: pd.DataFrame, out: Path, model: str) -> None:
    measured = rows.dropna(subset=["tokens_per_s"])
    batches = sorted(measured.batch.unique())
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    colours = {v: f"C{i}" for i, v in enumerate(measured.variant.unique())}
    styles = dict(zip(sorted(measured.tp.unique()), ["-", "--", ":", "-."], strict=False))  # a line style a TP degree
    for ax, batch in zip(axes[0], batches, strict=True):
        for (variant, tp), line in measured[measured.batch == batch].groupby(["variant", "tp"], sort=False):
            ax.plot(line.context, line.tokens_per_s, styles[tp], color=colours[variant], marker="o",
                    label=f"{variant} TP-{tp}")
        ax.set(xscale="log", yscale="log", xlabel="cached positions", ylabel="decode tokens/s",
               title=f"{model}, batch {batch}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--baseline", default="mla_rope", help="the variant every row is divided by, at its TP degree")
    args = parser.parse_args()
    rows, files = read_folder(args.folder)
    command = f"python scripts/tp_decode_table.py {args.folder}"
    parts = [f"# Tensor-parallel decode, model={files[0]['model']} (`{command}`)\n"]
    parts += [f"- TP-{f['tp']}: {f['device']}, {f['date']}, `{f['command']}`" for f in files]
    for batch in sorted(rows.batch.unique()):
        parts += [f"\nBatch {batch}, decode tokens/s:\n", table(rows, batch, args.baseline)]
    parts.append(f"![decode tokens/s against context]({PLOT})")
    text = "\n".join(parts) + "\n"
    print(text)
    (args.folder / TABLE).write_text(text)
    plot(rows, args.folder / PLOT, files[0]["model"])
    print(f"wrote {args.folder / TABLE} and {args.folder / PLOT}")


if __name__ == "__main__":
    main()
