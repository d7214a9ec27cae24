"""Compare finished runs: `python -m latentlm.compare <multirun dir | run dirs | wandb:entity/project/group> ...`.

Gathers runs (local: every directory under the inputs that holds a summary.json; W&B: every run of a group),
averages the seeds of each variant (attention, rank, model) and prints a markdown table with the KV-cache size
and the validation loss of each variant against the MHA baseline. Writes, to --out (default: the first input
dir), the table as compare.md and compare.json and two plots: val_loss_curves.png (validation loss against
step, mean and std over seeds) and pareto_kv_vs_loss.png (validation loss against KV-cache bytes per token,
with the Pareto front).

Rank only changes the latent variants (attention type `latent`); for the others it is n/a, so runs of e.g.
MHA at two ranks are the same experiment: the first one of each seed is kept and the others are reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Per-run quantities; the table and compare.json aggregate each over seeds (mean, std, n).
QUANTITIES = (
    "params",
    "kv_elements_per_token",
    "kv_bytes_per_token",
    "val_loss",  # the --metric: val_loss_best (default) or val_loss_final
    "val_loss_best",
    "val_loss_final",
    "val_acc",
    "tokens_per_s",
    "entropy_floor",
    "gap_to_floor",  # val_loss - entropy_floor
)
CURVES_PNG, PARETO_PNG, TABLE_MD, TABLE_JSON = (
    "val_loss_curves.png",
    "pareto_kv_vs_loss.png",
    "compare.md",
    "compare.json",
)


class CompareError(ValueError):
    """A bad input: printed as one line, exit status 2."""


@dataclass
class Run:
    attention: str
    rank: float | None  # None where the variant has no latent (rank n/a)
    model: str
    seed: int | None
    values: dict[str, float | None]
    curve: list[tuple[int, float]]  # (step, val/loss)
    source: str
    tokens: int | None = None

    @property
    def variant(self) -> tuple[str, str, float | None]:
        return (self.model, self.attention, self.rank)


@dataclass
class Row:
    model: str
    attention: str
    rank: float | None
    runs: list[Run]
    stats: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    kv_reduction_pct: float | None = None  # 100 x (1 - KV / KV of the baseline)
    val_loss_change_pct: float | None = None  # 100 x (loss / loss of the baseline - 1)
    is_baseline: bool = False

    def mean(self, key: str) -> float | None:
        return self.stats[key]["mean"]


# ---------------------------------------------------------------------------------------------- reading runs


def _lookup(mapping: dict[str, Any] | None, *paths: str) -> Any:
    """The first of `paths` (dotted) found in `mapping`, nested (a.b) or flat ('a.b' or 'a/b' keys)."""
    if not mapping:
        return None
    for path in paths:
        for key in (path, path.replace(".", "/")):
            if key in mapping and mapping[key] is not None:
                return mapping[key]
        node: Any = mapping
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if node is not None:
            return node
    return None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, (dict, list, str)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def uses_rank(attention: str, config: dict[str, Any] | None) -> bool:
    """Whether `rank` changes this attention: latent variants only. From the run's config, else configs/."""
    kind = _lookup(config, "attention.type", "config.attention.type")
    if kind is None:
        from hydra import compose, initialize_config_dir

        from latentlm.config import CONFIG_DIR

        kind = "latent"  # unknown: keep the rank
        if (CONFIG_DIR / "attention" / f"{attention}.yaml").is_file():
            with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):  # an option may inherit its `type`
                kind = compose("train", overrides=[f"attention={attention}"]).attention.type
    return kind == "latent"


def make_run(
    summary: dict[str, Any],
    config: dict[str, Any] | None,
    curve: list[tuple[int, float]],
    source: str,
    metric: str = "best",
) -> Run:
    """One run from a summary (summary.json, or a W&B run summary) and its config.

    A W&B summary that lacks summary.json's keys falls back to the last logged metrics (val/loss, val/acc,
    data/entropy_floor, perf/tokens_per_s) and to the logged hyperparameters (attention, rank, model, params).
    """
    attention = _lookup(summary, "attention") or _lookup(config, "attention.name", "attention")
    if not isinstance(attention, str):
        raise CompareError(f"{source}: no attention name in its summary or config")
    rank = _float(_first(_lookup(summary, "rank"), _lookup(config, "rank")))
    model = _first(_lookup(summary, "model"), _lookup(config, "model"))
    model = model if isinstance(model, str) else "?"
    seed = _first(_lookup(summary, "seed"), _lookup(config, "seed", "config.seed"))
    curve = sorted(dict(curve).items())  # one value a step
    if len(curve) > 1 and curve[-1][0] - curve[-2][0] <= 1 and math.isclose(curve[-1][1], curve[-2][1], rel_tol=1e-6):
        curve.pop()  # train.py's validation after fit, of the weights the last validation in fit saw
    final = _float(_lookup(summary, "val_loss_final", "val/loss"))
    best = _float(_lookup(summary, "val_loss_best"))
    if best is None and (curve or final is not None):
        best = min([v for _, v in curve] + ([final] if final is not None else []))
    floor = _float(_lookup(summary, "entropy_floor", "data/entropy_floor"))
    loss = best if metric == "best" else final
    kv = _float(_lookup(summary, "kv_cache.elements_per_token"))
    kv_bytes = _float(_lookup(summary, "kv_cache.bytes_per_token_bf16"))
    values = {
        "params": _float(_first(_lookup(summary, "params"), _lookup(config, "params"))),
        "kv_elements_per_token": kv,
        "kv_bytes_per_token": kv_bytes if kv_bytes is not None else (2 * kv if kv is not None else None),
        "val_loss": loss,
        "val_loss_best": best,
        "val_loss_final": final,
        "val_acc": _float(_lookup(summary, "val_acc_final", "val/acc")),
        "tokens_per_s": _float(_lookup(summary, "tokens_per_s", "perf/tokens_per_s")),
        "entropy_floor": floor,
        "gap_to_floor": loss - floor if loss is not None and floor is not None else None,
    }
    tokens = _lookup(summary, "tokens")
    return Run(
        attention=attention,
        rank=rank if uses_rank(attention, config) else None,
        model=model,
        seed=int(seed) if seed is not None else None,
        values=values,
        curve=curve,
        source=source,
        tokens=int(tokens) if isinstance(tokens, (int, float)) else None,
    )


def read_curve(metrics_csv: Path) -> list[tuple[int, float]]:
    """(step, val/loss) from a run's csv/metrics.csv (empty when the file or the column is missing)."""
    if not metrics_csv.is_file():
        return []
    with open(metrics_csv, newline="") as f:
        return [(int(float(r["step"])), float(r["val/loss"])) for r in csv.DictReader(f) if r.get("val/loss")]


def find_run_dirs(root: Path) -> list[Path]:
    """`root` if it is a run dir (holds summary.json), else every run dir below it."""
    if (root / "summary.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("summary.json"))


def load_run_dir(run_dir: Path, metric: str = "best") -> Run:
    summary = json.loads((run_dir / "summary.json").read_text())
    config = None
    if (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    return make_run(summary, config, read_curve(run_dir / "csv" / "metrics.csv"), str(run_dir), metric)


def load_wandb(spec: str, metric: str = "best") -> list[Run]:
    """Every run of a W&B group, `wandb:entity/project/group`, through the public API (needs the network)."""
    parts = spec.removeprefix("wandb:").split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise CompareError(f"{spec} is not wandb:entity/project/group")
    entity, project, group = parts
    import wandb

    runs = []
    for run in wandb.Api().runs(f"{entity}/{project}", filters={"group": group}):
        if run.state != "finished":
            print(f"skipping W&B run {run.id} ({run.name}): state {run.state}", file=sys.stderr)
            continue
        history = run.scan_history(keys=["trainer/global_step", "val/loss"])
        curve = [(int(row["trainer/global_step"]), float(row["val/loss"])) for row in history]
        source = f"wandb:{entity}/{project}/{run.id}"
        runs.append(make_run(dict(run.summary_metrics), dict(run.config), curve, source, metric))
    if not runs:
        raise CompareError(f"{spec}: no finished run in W&B group {group!r} of {entity}/{project}")
    return runs


def load_runs(sources: Sequence[str], metric: str = "best") -> list[Run]:
    runs: list[Run] = []
    seen: set[Path] = set()
    for source in sources:
        if source.startswith("wandb:"):
            runs += load_wandb(source, metric)
            continue
        path = Path(source)
        if not path.is_dir():
            raise CompareError(f"{source} is not a directory (nor wandb:entity/project/group)")
        found = find_run_dirs(path)
        if not found:
            raise CompareError(f"{source} holds no run (no summary.json below it)")
        dirs = [d for d in found if d.resolve() not in seen]  # an input inside another is read once
        seen.update(d.resolve() for d in dirs)
        runs += [load_run_dir(d, metric) for d in dirs]
    return runs


# ------------------------------------------------------------------------------------------------ aggregating


def stats(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (n - 1; None for one value) and count of the values that are known."""
    known = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(known) if known else None,
        "std": statistics.stdev(known) if len(known) > 1 else None,
        "n": len(known),
    }


def dedupe(runs: list[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """Keep one run per (variant, seed); returns the kept runs and the (dropped, kept) pairs.

    Runs without a seed are all kept."""
    kept: dict[tuple, Run] = {}
    dropped = []
    for i, run in enumerate(runs):
        key = (*run.variant, run.seed if run.seed is not None else f"no seed {i}")
        if key in kept:
            dropped.append((run, kept[key]))
        else:
            kept[key] = run
    return list(kept.values()), dropped


def aggregate(runs: list[Run], baseline: str = "mha") -> list[Row]:
    """One row a variant (model, attention, rank), seeds averaged, with the changes against the baseline."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.variant, []).append(run)

    def order(key: tuple) -> tuple:
        model, attention, rank = key
        return (model, attention != baseline, attention, -(rank if rank is not None else math.inf))

    rows = []
    for key in sorted(groups, key=order):
        members = sorted(groups[key], key=lambda r: (r.seed is None, r.seed or 0))
        row = Row(model=key[0], attention=key[1], rank=key[2], runs=members)
        row.stats = {q: stats(r.values[q] for r in members) for q in QUANTITIES}
        rows.append(row)
    for row in rows:
        base = next((b for b in rows if b.model == row.model and b.attention == baseline), None)
        if base is None:
            continue
        row.is_baseline = row is base
        kv, kv_base = row.mean("kv_elements_per_token"), base.mean("kv_elements_per_token")
        if kv is not None and kv_base:
            row.kv_reduction_pct = 100 * (1 - kv / kv_base)
        loss, loss_base = row.mean("val_loss"), base.mean("val_loss")
        if loss is not None and loss_base:
            row.val_loss_change_pct = 100 * (loss / loss_base - 1)
    return rows


# ------------------------------------------------------------------------------------------------- the table

COLUMNS = (
    "variant",
    "rank",
    "params",
    "KV elements/token",
    "KV reduction vs {baseline}",
    "val loss ({metric})",
    "change vs {baseline}",
    "val acc",
    "tokens/s",
    "gap to entropy floor",
    "n",
)


def _si(value: float | None) -> str:
    if value is None:
        return "–"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def _mean_std(s: dict[str, Any], digits: int = 4) -> str:
    if s["mean"] is None:
        return "–"
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def _fraction_of_d(rank: float) -> str:
    """0.5 -> d/2, 0.25 -> d/4, 1 -> d, 0.75 -> 0.75d: the latent dim as the paper writes it."""
    inverse = 1 / rank
    if abs(inverse - round(inverse)) < 1e-9:
        return "d" if round(inverse) == 1 else f"d/{round(inverse)}"
    return f"{rank:g}d"


def _rank(rank: float | None) -> str:
    return "n/a" if rank is None else f"{rank:g} ({_fraction_of_d(rank)})"


def markdown_table(rows: list[Row], baseline: str = "mha", metric: str = "best") -> str:
    several_models = len({r.model for r in rows}) > 1
    header = [c.format(baseline=baseline.upper() if baseline == "mha" else baseline, metric=metric) for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        kv = row.mean("kv_elements_per_token")
        change = (
            "baseline"
            if row.is_baseline
            else (f"{row.val_loss_change_pct:+.2f}%" if row.val_loss_change_pct is not None else "–")
        )
        cells = [
            row.attention + (f" ({row.model})" if several_models else ""),
            _rank(row.rank),
            _si(row.mean("params")),
            f"{kv:,.0f}" if kv is not None else "–",
            f"{row.kv_reduction_pct:.1f}%" if row.kv_reduction_pct is not None else "–",
            _mean_std(row.stats["val_loss"]),
            change,
            _mean_std(row.stats["val_acc"]),
            _si(row.mean("tokens_per_s")),
            _mean_std(row.stats["gap_to_floor"]),
            str(len(row.runs)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_json(rows: list[Row], baseline: str, metric: str, sources: Sequence[str]) -> dict[str, Any]:
    return {
        "metric": f"val_loss_{metric}",
        "baseline": baseline,
        "sources": list(sources),
        "rows": [
            {
                "model": row.model,
                "attention": row.attention,
                "rank": row.rank,
                "n": len(row.runs),
                "seeds": [r.seed for r in row.runs],
                "runs": [r.source for r in row.runs],
                "is_baseline": row.is_baseline,
                "kv_reduction_vs_baseline_pct": row.kv_reduction_pct,
                "val_loss_change_vs_baseline_pct": row.val_loss_change_pct,
                **row.stats,
            }
            for row in rows
        ],
    }


# ------------------------------------------------------------------------------------------------- the plots


def _label(row: Row) -> str:
    return row.attention + (f" r={_fraction_of_d(row.rank)}" if row.rank is not None else "")


def _mean_curve(row: Row) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and std (0 where one seed) of val/loss over the seeds that logged each step."""
    by_step: dict[int, list[float]] = {}
    for run in row.runs:
        for step, value in run.curve:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds


def _styles(rows: list[Row]) -> dict[int, dict[str, Any]]:
    """One colour an attention variant, one line style a rank (solid: the largest rank, or n/a)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    colours = {a: palette[i % len(palette)] for i, a in enumerate(dict.fromkeys(r.attention for r in rows))}
    ranks = sorted({r.rank for r in rows if r.rank is not None}, reverse=True)
    dashes = ["-", "--", ":", "-."]
    return {
        id(r): {
            "color": colours[r.attention],
            "linestyle": "-" if r.rank is None else dashes[ranks.index(r.rank) % len(dashes)],
        }
        for r in rows
    }


def plot_curves(rows: list[Row], path: Path) -> None:
    """Validation loss against step: the whole run (left) and its second half, zoomed (right)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    full, zoom = fig.subplots(1, 2)
    styles = _styles(rows)
    last = max((s for r in rows for run in r.runs for s, _ in run.curve), default=0)
    zoom_values, zoom_steps = [], []
    for row in rows:
        steps, means, stds = _mean_curve(row)
        if not steps:
            continue
        label = _label(row) + (f" ({row.model})" if len({r.model for r in rows}) > 1 else "") + f", n={len(row.runs)}"
        for ax in (full, zoom):
            ax.plot(steps, means, marker="o", markersize=3, label=label, **styles[id(row)])
            if any(stds):
                low = [m - s for m, s in zip(means, stds, strict=True)]
                high = [m + s for m, s in zip(means, stds, strict=True)]
                ax.fill_between(steps, low, high, color=styles[id(row)]["color"], alpha=0.15, linewidth=0)
        late = [(st, m, s) for st, m, s in zip(steps, means, stds, strict=True) if st >= last / 2]
        zoom_values += [m - s for _, m, s in late] + [m + s for _, m, s in late]
        zoom_steps += [st for st, _, _ in late]
    floors = [row.mean("entropy_floor") for row in rows if row.mean("entropy_floor") is not None]
    if floors:
        floor = statistics.fmean(floors)
        full.axhline(floor, color="grey", linestyle=":", linewidth=1, label=f"entropy floor {floor:.3f}")
    if zoom_values:
        low, high = min(zoom_values), max(zoom_values)
        pad = 0.08 * (high - low or abs(high) * 0.01 or 0.01)
        first = min(zoom_steps)
        zoom.set_xlim(first - 0.04 * (last - first or 1), last + 0.04 * (last - first or 1))
        zoom.set_ylim(low - pad, high + pad)
    full.set_title("Validation loss (mean ± std over seeds)")
    zoom.set_title("Second half of training, zoomed")
    for ax in (full, zoom):
        ax.set_xlabel("step")
        ax.set_ylabel("val loss (nats/token)")
        ax.grid(alpha=0.3)
    full.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (smaller x and smaller y), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: list[Row], path: Path, metric: str = "best") -> None:
    """Validation loss against KV-cache bytes per token (bf16, all layers), with the Pareto front."""
    from matplotlib.figure import Figure

    usable = [r for r in rows if r.mean("kv_bytes_per_token") is not None and r.mean("val_loss") is not None]
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    styles = _styles(rows)
    several_models = len({r.model for r in rows}) > 1
    points = [(r.mean("kv_bytes_per_token") / 1024, r.mean("val_loss")) for r in usable]
    front = pareto_front(points)
    if len(front) > 1:
        xs, ys = zip(*(points[i] for i in front), strict=True)
        ax.plot(xs, ys, color="black", linewidth=1, alpha=0.5, zorder=1, label="Pareto front")
    for i, row in enumerate(usable):
        x, y = points[i]
        std = row.stats["val_loss"]["std"]
        on_front = i in front
        ax.errorbar(
            x,
            y,
            yerr=std if std is not None else None,
            fmt="o" if row.rank is None or row.rank == max(r.rank or 0 for r in usable) else "s",
            color=styles[id(row)]["color"],
            markersize=9 if on_front else 6,
            markeredgecolor="black" if on_front else "none",
            capsize=3,
            zorder=2,
        )
        reduction = f", -{row.kv_reduction_pct:.0f}% KV" if row.kv_reduction_pct else ""
        text = _label(row) + (f" ({row.model})" if several_models else "") + reduction
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 5), fontsize=8)
    ax.set_xlabel("KV cache per token (KiB, bf16, all layers)")
    ax.set_ylabel(f"val loss, {metric} (nats/token)")
    ax.set_title("Validation loss vs KV-cache size (mean ± std over seeds)")
    ax.set_xlim(left=0, right=max((p[0] for p in points), default=1) * 1.25)
    ax.grid(alpha=0.3)
    if len(front) > 1:
        ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------------------------------------- CLI


def compare(
    sources: Sequence[str], out: Path | None = None, baseline: str = "mha", metric: str = "best", plots: bool = True
) -> tuple[list[Row], Path]:
    """Load, aggregate and write the table (markdown + JSON) and the plots; returns the rows and the out dir."""
    runs, dropped = dedupe(load_runs(sources, metric))
    if not runs:
        raise CompareError(f"no run found in {', '.join(sources)}")
    for run, kept in dropped:
        print(
            f"note: {run.source} repeats {run.attention} seed {run.seed} (rank n/a for {run.attention}); "
            f"kept {kept.source}",
            file=sys.stderr,
        )
    budgets = {r.tokens for r in runs if r.tokens is not None}
    if len(budgets) > 1:
        print(f"warning: the runs trained on different token budgets: {sorted(budgets)}", file=sys.stderr)
    rows = aggregate(runs, baseline)
    if out is None:
        first = sources[0]
        out = Path(first) if not first.startswith("wandb:") else Path("logs") / "compare" / first.rsplit("/", 1)[-1]
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE_MD).write_text(markdown_table(rows, baseline, metric))
    (out / TABLE_JSON).write_text(json.dumps(table_json(rows, baseline, metric, sources), indent=2))
    if plots:
        plot_curves(rows, out / CURVES_PNG)
        plot_pareto(rows, out / PARETO_PNG, metric)
    return rows, out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latentlm.compare",
        description="Aggregate runs over seeds and compare attention variants: a markdown table and plots.",
    )
    parser.add_argument(
        "sources",
        nargs="+",
        help="run dirs or dirs holding them (a multirun dir), or wandb:entity/project/group",
    )
    parser.add_argument("--out", type=Path, default=None, help="where the table and plots go (default: first input)")
    parser.add_argument("--baseline", default="mha", help="the attention the others are compared with (default: mha)")
    parser.add_argument(
        "--metric",
        choices=("best", "final"),
        default="best",
        help="which validation loss: the best of the run (default) or the final one",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the table only")
    args = parser.parse_args(argv)
    try:
        rows, out = compare(args.sources, args.out, args.baseline, args.metric, plots=not args.no_plots)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(markdown_table(rows, args.baseline, args.metric), end="")
    written = [TABLE_MD, TABLE_JSON] + ([] if args.no_plots else [CURVES_PNG, PARETO_PNG])
    print(f"wrote {', '.join(str(out / name) for name in written)}", file=sys.stderr)


if __name__ == "__main__":
    main()
