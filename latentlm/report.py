"""docs/results.md from committed run summaries: `python -m latentlm.report docs/results --out docs/results.md`.

`make results` runs it. Each folder `docs/results/<experiment>/` that holds `runs/*.json` (each a run's summary.json,
copied from its run dir) becomes one section of the report:
- `intro.md` from that folder, verbatim: the hand-written context (the paper, its claims), kept out of code;
- the setup, read from the runs' resolved configs and summaries;
- compare's tables and plots (compare.md, compare.json and the PNGs are rewritten in the experiment folder);
- training speed, one table for each `bench_train*.json` in the folder (scripts/bench_train.py --out <folder>), and
  decode speed, one table for each `bench_decode*.json` (scripts/bench_decode.py --out <folder>): one file a
  benchmark call, since a ratio to the twin holds only within a call. A `note` key added to such a file by hand
  (say, that a row timed code since replaced) is printed under its table's heading;
- claims generated from the numbers, each with its n, its 95% interval and whether the interval holds 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentlm.compare import (
    CURVES_PNG,
    METRICS,
    PARETO_PNG,
    TWINS_PNG,
    CompareError,
    Comparison,
    compare,
    fraction_of_d,
    interval,
    label,
    markdown,
    verdict,
    write,
)
from latentlm.config import fail

INTRO = "intro.md"  # optional, beside runs/
TRAIN = "bench_train*.json"  # optional, beside runs/: scripts/bench_train.py's outputs for these variants, one a call
DECODE = "bench_decode*.json"  # optional, beside runs/: scripts/bench_decode.py's outputs, one a call
SETUP_KEYS = (  # resolved-config settings shown under Setup (the group headers name any other that differs)
    "model.d_model",
    "model.n_layer",
    "model.n_head",
    "model.block_size",
    "data._target_",
    "data.num_stories",
    "data.val_stories",
    "data.batch_size",
    "data.seq_len",
    "tokenizer._target_",
    "tokenizer.vocab_size",
    "trainer.max_steps",
    "trainer.precision",
    "optimizer.lr",
    "scheduler.warmup_steps",
    "label_smoothing",
)


def _plain(value: Any) -> str:
    """512 and 512.0 -> "512", 100000 -> "100,000"; anything else as str."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and float(value).is_integer():
        return f"{int(value):,}"
    return str(value)


def _distinct(values: Iterable[Any]) -> str:
    """The distinct known values, in order of appearance, joined by commas ("–" if none)."""
    known = pd.Series(list(values), dtype=object).dropna()
    return ", ".join(_plain(v) for v in pd.unique(known)) or "–"


def setup_table(comparison: Comparison) -> str:
    """The experiment's setup: the SETUP_KEYS of its groups' configs, the budget, seeds, device, sweep and commit."""
    configs = [json.loads(key) for key in comparison.headers]
    runs = comparison.runs
    rows = [(f"`{key}`", _distinct(config.get(key) for config in configs)) for key in SETUP_KEYS]
    rows += [
        ("tokens per run", _distinct(runs.tokens)),
        ("seeds", _distinct(sorted(runs.seed.unique()))),
        ("device", _distinct(runs.device)),
        ("sweep_id (the launch time by default)", _distinct(runs.sweep_id)),
        ("git commit", _distinct(runs.git_commit.dropna().astype(str).str[:10])),
        (
            "runs",
            f"{len(runs)} compared, {len(comparison.set_apart)} set apart, "
            f"{len(comparison.failed)} failed or diverged, {comparison.skipped} skipped",
        ),
    ]
    return "| setting | value |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)


def _interval_claim(row: pd.Series, name: str, digits: int, unit: str) -> str:
    """"+1.42% [-0.82%, +3.65%] (n=3): not distinguishable at 3 seeds", or "...: distinguishable, higher"."""
    n = 0 if pd.isna(row[f"{name}_n"]) else int(row[f"{name}_n"])
    said = verdict(row, name)
    said = f"distinguishable, {said}" if said in ("lower", "higher") else said
    return f"{interval(row, name, digits, unit)} (n={n}): {said}"


def twin_claims(comparison: Comparison) -> list[str]:
    """One claim a variant with a twin: its cache against the twin's, then its loss and accuracy, paired by seed."""
    several = len(comparison.headers) > 1
    claims = []
    for _, row in comparison.variants[comparison.variants.twin.notna()].iterrows():
        where = f"[{comparison.headers[row.group]}] " if several else ""
        kv = row.kv_change_pct
        if pd.isna(kv):
            cache = "has no KV size to compare"
        elif round(kv, 1) == 0:
            cache = f"caches as much as `{row.twin}`"
        else:
            cache = f"caches {abs(kv):.1f}% {'less' if kv < 0 else 'more'} than `{row.twin}`"
        if pd.isna(row.loss_change_n):
            paired = f"no seed of it was trained with `{row.twin}`, so there is no paired comparison"
        else:
            paired = (
                f"its val loss ({comparison.metric}) against the twin is "
                f"{_interval_claim(row, 'loss_change_pct', 2, '%')}; its val accuracy "
                f"{_interval_claim(row, 'acc_change', 4, '')}"
            )
        claims.append(f"{where}`{label(row.attention, row['rank'])}` {cache}; {paired}.")
    return claims


def rank_claims(comparison: Comparison) -> list[str]:
    """For each latent variant at 3 ranks or more: whether its mean loss is monotone in rank, and which neighbouring
    ranks have overlapping 95% intervals (a step between them the seeds do not resolve)."""
    several = len(comparison.headers) > 1
    latent = comparison.variants[comparison.variants["rank"].notna()]
    claims = []
    for (group, attention), rows in latent.groupby(["group", "attention"], sort=False):
        if len(rows) < 3:
            continue
        rows = rows.sort_values("rank")
        steps = rows.loss_mean.diff().iloc[1:]
        shape = (
            "falls as the rank grows"
            if (steps < 0).all()
            else "rises as the rank grows"
            if (steps > 0).all()
            else "is not monotone in rank"
        )
        means = ", ".join(f"{fraction_of_d(r.rank)}: {r.loss_mean:.4f}" for r in rows.itertuples())
        neighbours = list(zip(rows.iloc[:-1].itertuples(), rows.iloc[1:].itertuples(), strict=True))
        if rows.loss_ci.isna().any():
            overlap = "a rank with n < 2 has no interval, so the steps are not resolved"
        else:
            overlapping = [
                f"{fraction_of_d(a.rank)} and {fraction_of_d(b.rank)}"
                for a, b in neighbours
                if abs(a.loss_mean - b.loss_mean) <= a.loss_ci + b.loss_ci
            ]
            overlap = (
                f"the 95% intervals overlap between {', '.join(overlapping)}, so those steps are not resolved"
                if overlapping
                else "the 95% intervals of neighbouring ranks do not overlap"
            )
        where = f"[{comparison.headers[group]}] " if several else ""
        claims.append(f"{where}`{attention}`: the mean val loss {shape} ({means}); {overlap}.")
    return claims


def twin_of(variant: str) -> str | None:
    """The attention config's twin (None for a baseline), for a variant named `name[@rank][:path]`."""
    from latentlm.config import compose_train

    return compose_train([f"attention={variant.split('@')[0].split(':')[0]}"]).attention.get("twin")


def train_table(bench: dict[str, Any]) -> str:
    """Training tokens/s through the Trainer of each variant a bench_train.json measured, with its ratio to the
    twin's and its FLOPs per token over the twin's, both from the same call (the reference rows, nanoGPT and plain
    loops, are in docs/benchmarks.md). A row that times a switch (`mha+fused_loss=true`) is compared with its plain
    variant (`mha`): the comparison changes that switch alone."""
    rows = {r["variant"]: r for r in bench["rows"] if r["variant"] != "nanogpt" and "(" not in r["variant"]}
    device = next(iter(rows.values()))["device"] if rows else "?"
    lines = [f"Training tokens/s through the Trainer ({device}, {bench['date']}, `{bench['command']}`; the twin "
             "measured in the same call):\n",
             *note_lines(bench),
             "| variant | tokens/s | vs twin | FLOPs/token vs twin | MFU |", "|---|---|---|---|---|"]
    for v, r in rows.items():
        attention, switched = v.partition("+")[::2]
        twin = rows.get(attention if switched else twin_of(v) or "")
        speed, flops = (f"{r[k] / twin[k]:.2f}x" if twin else "–" for k in ("tokens_per_s", "flops_per_token"))
        mfu = "–" if r.get("mfu") is None else f"{r['mfu']:.1%}"
        runs = r.get("tokens_per_s_runs", [])  # bench_train.py --repeats: the median run's row, every run's rate
        spread = f" ({min(runs):,.0f}-{max(runs):,.0f}, {len(runs)} runs)" if runs else ""
        lines.append(f"| {v} | {r['tokens_per_s']:,.0f}{spread} | {speed} | {flops} | {mfu} |")
    return "\n".join(lines) + "\n"


def note_lines(bench: dict[str, Any]) -> list[str]:
    """A benchmark file's hand-written `note`, as a paragraph above its table (none without one)."""
    return [f"{bench['note']}\n"] if bench.get("note") else []


def decode_table(bench: dict[str, Any]) -> str:
    """Decode tokens/s of each variant a bench_decode.json measured, at each (batch, context), and its ratio to the
    twin's where the twin was measured in the same call."""
    rows = [r for r in bench["rows"] if "tokens_per_s" in r]
    cells = sorted({(r["batch"], r["context"]) for r in rows})
    rate = {(r["variant"], r["batch"], r["context"]): r["tokens_per_s"] for r in rows}
    names = {s["variant"]: s["variant"].split("@")[0].split(":")[0] for s in bench["summary"]}
    twins = {v: twin_of(v) for v in names}
    measured = {name: v for v, name in names.items() if "@" not in v}  # the twin's own row (no rank of its own)
    header = "| variant | KV bytes/token | " + " | ".join(f"b{b} x {c:,}" for b, c in cells) + " |"
    lines = [f"Decode tokens/s ({bench['gpu'] or bench['device']}, {bench['date']}, `{bench['command']}`; the ratio "
             "to the twin in the same call in brackets):\n", *note_lines(bench),
             header, "|---|---|" + "---|" * len(cells)]
    for s in bench["summary"]:
        v, twin = s["variant"], measured.get(twins[s["variant"]] or "")
        out = []
        for b, c in cells:
            own, base = rate.get((v, b, c)), rate.get((twin, b, c)) if twin else None
            out.append("–" if own is None else f"{own:,.0f}" + (f" ({own / base:.2f}x)" if base else ""))
        lines.append(f"| {v} | {s['bytes_per_token']:,} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def experiment_section(folder: Path, results_md: Path, metric: str = "final") -> str:
    """The report's section on the runs in `folder`/runs; writes compare's tables and plots into `folder`."""
    comparison = compare([str(folder / "runs")], metric)
    write(comparison, folder)
    parts = [f"## {folder.name}\n"]
    if (folder / INTRO).is_file():
        parts.append((folder / INTRO).read_text().strip() + "\n")
    parts += ["### Setup\n", setup_table(comparison), "### Results\n", markdown(comparison, level=4)]
    if len(comparison.runs):
        link = {
            name: Path(os.path.relpath(folder / name, results_md.parent)).as_posix()  # relative to the report
            for name in (CURVES_PNG, PARETO_PNG, TWINS_PNG)
        }
        parts += [
            "### Plots\n",
            f"![Validation loss against step, mean ± 95% CI over seeds]({link[CURVES_PNG]})\n",
            f"![Validation loss against KV-cache bytes per token, mean ± 95% CI, Pareto front]({link[PARETO_PNG]})\n",
            f"![Each variant's val loss against its twin's, paired by seed, mean ± 95% CI]({link[TWINS_PNG]})\n",
        ]
    if train_calls := sorted(folder.glob(TRAIN)):
        parts += ["### Training speed\n"] + [train_table(json.loads(path.read_text())) for path in train_calls]
    if decode_calls := sorted(folder.glob(DECODE)):
        parts += ["### Decode speed\n"] + [decode_table(json.loads(path.read_text())) for path in decode_calls]
    claims = twin_claims(comparison) + rank_claims(comparison)
    parts += ["### Claims\n", "".join(f"- {claim}\n" for claim in claims) or "No variant has a twin here.\n"]
    return "\n".join(parts)


def reproduce_section(experiments: Sequence[str]) -> str:
    commands = [f"make sweep EXPERIMENT={name}" for name in experiments]
    return (
        "## How to reproduce\n\n"
        "On a GPU, each command trains an experiment's sweep (`python -m latentlm.train -m experiment=<name>`), copies "
        "the summaries of its trained runs into `docs/results/<name>/runs/` (replacing committed runs of the same "
        "names; `JOBS=k` trains k at once) and regenerates this file (and each experiment's compare.md, compare.json "
        "and plots); `make results` alone "
        "regenerates it from the committed summaries:\n\n"
        "```bash\n" + "\n".join(commands) + "\n```\n"
    )


def report(results_dir: Path, out: Path, metric: str = "final") -> str:
    """The whole report, one section an experiment folder of `results_dir` that holds runs/*.json."""
    folders = sorted(p.parent for p in results_dir.glob("*/runs") if any(p.glob("*.json")))
    if not folders:
        raise CompareError(f"{results_dir} holds no <experiment>/runs/*.json")
    intro = (
        "# Results\n\n"
        "<!-- Generated by `make results` (python -m latentlm.report) from docs/results/<experiment>/runs/*.json "
        "and docs/results/<experiment>/intro.md: edit those, not this file. -->\n\n"
        f"The headline is `val_loss_{metric}`"
        + (
            ": the token-weighted loss over the whole validation split at the end of the budget"
            if metric == "final"
            else ": the least of the run's validations (a minimum over noisy values)"
        )
        + ". Means over seeds come with their 95% t-interval, t(0.975, n - 1) x sd / sqrt(n), and n. Each variant "
        "is compared with its twin, the baseline that differs from it only in attention, seed by seed; a change "
        "whose interval holds 0 is not distinguishable at that many seeds. Only runs whose resolved configs agree "
        "on everything but attention, rank and seed are compared with each other.\n"
    )
    sections = [experiment_section(folder, out, metric) for folder in folders]
    return "\n".join([intro, *sections, reproduce_section([f.name for f in folders])])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latentlm.report", description="Write docs/results.md from committed run summaries."
    )
    parser.add_argument("results", type=Path, nargs="?", default=Path("docs/results"), help="default: docs/results")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"), help="default: docs/results.md")
    parser.add_argument("--metric", choices=METRICS, default="final", help="val_loss_final (default) or val_loss_best")
    args = parser.parse_args(argv)
    try:
        text = report(args.results, args.out, args.metric)
    except CompareError as err:
        fail(err)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
