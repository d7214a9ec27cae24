"""Compare finished runs: `python -m latentlm.compare <run dirs | dirs of runs | summary JSONs | wandb:e/p/group> ...`.

What is compared with what:
- Runs fall into comparable groups: runs whose resolved configs agree on everything but the attention variant,
  its rank and the seed (`GROUP_KEY_IGNORES` lists what else may differ). Nothing is averaged or paired across
  groups; each group has its own tables, headed by the settings that set it apart from the other groups.
- In a group, each variant (attention, rank) is averaged over its seeds: the mean, the 95% t-interval of the mean,
  t(0.975, n - 1) x sd / sqrt(n), and n. Rank is NaN where the attention has no latent.
- Each variant is compared with its twin, the baseline that differs from it only in attention (the summary's
  `twin`, e.g. mla -> mha, mla_rope -> mha_rope), seed by seed: the paired differences get the same interval,
  and one that holds 0 is "not distinguishable at n seeds".
- Failed and diverged runs are listed with their error; a second run of one (group, variant, seed) is set apart
  with the run it repeats; skipped jobs (a sweep's duplicates, never trained) are only counted.

Writes, to --out (default: the first input): compare.md, compare.json, val_loss_curves.png and
pareto_kv_vs_loss.png (validation loss against KV-cache bytes per token, 95% intervals as error bars).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
from pandas.api.typing import DataFrameGroupBy

from latentlm.config import fail
from latentlm.timings import PHASES

TABLE_MD, TABLE_JSON = "compare.md", "compare.json"
CURVES_PNG, PARETO_PNG, TWINS_PNG = "val_loss_curves.png", "pareto_kv_vs_loss.png", "loss_vs_twin.png"
METRICS = ("final", "best")  # val_loss_final: the whole validation split at the end; best: the least validation

# Keys of the resolved config (dotted; a key covers everything under it) that may differ inside one comparable group:
# the variant and the seed under comparison, and settings that change where things go or what is recorded, not
# what is trained. When unsure whether a setting changes training, it stays in the key: a needless split shows in
# the group headers, a wrong merge would show nowhere. trainer.precision stays, as the run resolved it (its
# summary's `precision`), since "auto" means bf16 on CUDA and fp32 on CPU.
GROUP_KEY_IGNORES = (
    "attention",
    "model.attention",  # ${attention}
    "module",  # ${model}, ${optimizer}, ... around the LightningModule's _target_
    "model._recursive_",  # how Hydra builds the model, not what it is
    "data._recursive_",
    "rank",
    "seed",
    "data.shuffle_seed",  # ${seed}: the training order
    "paths",
    "data.cache_dir",
    "data.hf_cache_dir",
    "sweep_id",
    "task_name",
    "ckpt_path",  # a resumed run trains to the same end as one that was not stopped
    "logger",
    "callbacks",  # checkpoints, throughput, judge samples: they watch training and do not change it
    "compile",
    "compile_mode",
    "compile_validation",  # where validation runs, as compile: rounding, not training
    "async_checkpoints",  # when checkpoints are written
    "fused_loss",  # the same loss computed in chunks: rounding, as compile
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "trainer.accelerator",
    "trainer.enable_progress_bar",
)
# Config values that were renamed after runs were recorded: an older run's config is read in today's words (the
# same training under other names), so it still compares with newer runs. Data and tokenizer configs named their
# source and kind before they named classes with `_target_`.
DATA_SOURCES = {
    "synthetic": "latentlm.data.datamodule.SyntheticDataModule",
    "text": "latentlm.data.datamodule.TextDataModule",
    "tinystories": "latentlm.data.datamodule.TinyStoriesDataModule",
}
TOKENIZER_KINDS = {
    "bpe": "latentlm.data.tokenizer.BPE",
    "bytes": "latentlm.data.tokenizer.Bytes",
    "gpt2": "latentlm.data.tokenizer.GPT2",
}
# Columns of the runs frame: summary.json's fields, nested ones under a short name. `group` is the comparable-group key.
RUN_FIELDS = (
    "run", "group", "status", "error", "attention", "twin", "rank", "seed", "params", "val_loss_final",
    "val_loss_best", "val_acc_final", "val_acc_best", "entropy_floor", "tokens_per_s", "tokens", "device",
    "precision", "sweep_id", "git_commit", "val_history",
)
NESTED_FIELDS = {
    "kv_cache.elements_per_token": "kv_elements",
    "kv_cache.bytes_per_token_bf16": "kv_bytes",
    "judge.valid_share": "judge_valid",
    "judge.valid_prefix_share": "judge_valid_prefix",
    "judge.consistent_share": "judge_consistent",
    **{f"timings.{phase}": f"time_{phase}" for phase in (*PHASES, "total")},
}
# What W&B's run summary holds when train.py could not add summary.json to it: Lightning's last logged values.
LIGHTNING_METRICS = {
    "val_loss_final": "val/loss",
    "val_acc_final": "val/acc",
    "entropy_floor": "data/entropy_floor",
    "tokens_per_s": "perf/tokens_per_s",
}
VARIANT = ["group", "attention", "rank"]  # one table row
# Averaged per variant; loss and acc are the --metric's validation loss and accuracy.
QUANTITIES = [
    "loss", "acc", "params", "kv_elements", "kv_bytes", "judge_valid", "judge_valid_prefix", "judge_consistent",
    "tokens_per_s", "entropy_floor", "tokens",
]
CHANGES = ["loss_change", "loss_change_pct", "acc_change"]  # variant minus twin, per seed


class CompareError(ValueError):
    """A bad input: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------- reading runs


def group_key(config: dict[str, Any], precision: str | None) -> str:
    """The resolved config less GROUP_KEY_IGNORES, as sorted JSON of dotted keys: runs with equal keys compare."""
    flat = pd.json_normalize(config).to_dict("records")[0] if config else {}
    key = {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in GROUP_KEY_IGNORES)}
    if precision is not None:
        key["trainer.precision"] = precision
    return json.dumps(key, sort_keys=True)


def complete_summary(summary: dict[str, Any], run: str) -> dict[str, Any]:
    """A run's summary with its name and group key, and what older summaries lack taken from its config."""
    config = summary.get("config") or {}
    attention = config.get("attention") if isinstance(config.get("attention"), dict) else {}
    summary = {"status": "ok", **summary, "run": run}  # older train.py wrote summary.json for finished runs only
    summary.setdefault("attention", attention.get("name"))
    summary.setdefault("twin", attention.get("twin"))
    summary.setdefault("rank", config.get("rank"))
    if attention and attention.get("rank") is None:
        summary["rank"] = None  # older summaries logged the rank of variants that have no latent (no rank) too
    config = current_config(config)
    if not isinstance(summary["attention"], str):
        raise CompareError(f"{run}: no attention name in its summary or config")
    summary["group"] = group_key(config, summary.get("precision"))
    return summary


def current_config(config: dict[str, Any]) -> dict[str, Any]:
    """An older run's resolved config in today's words, each the same training as before: the schedule as a
    function's config (f825408; tests/test_schedules.py pins warmup_cosine to the former LinearLR + cosine), the
    block family that was the only one (bf5e299), the Trainer's strategy that Lightning chose when none was named
    (before trainer=ddp, 33c89ea), the data module and the tokenizer named by `_target_` (DATA_SOURCES,
    TOKENIZER_KINDS)."""
    config = copy.deepcopy(config)
    if isinstance(config.get("model"), dict):
        config["model"].setdefault("block", "gpt2")  # before the llama block
    if isinstance(config.get("trainer"), dict):
        config["trainer"].setdefault("strategy", "auto")  # Lightning's default, which the older runs trained with
    scheduler = config.get("scheduler")
    if isinstance(scheduler, dict) and "_target_" not in scheduler:  # before schedules were functions
        config["scheduler"] = {"_target_": "latentlm.schedules.warmup_cosine", "_partial_": True, **scheduler}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    if "source" in data:
        data["_target_"] = DATA_SOURCES[data.pop("source")]
    for tokenizer in (config.get("tokenizer"), data.get("tokenizer")):
        if isinstance(tokenizer, dict) and "kind" in tokenizer:
            tokenizer["_target_"] = TOKENIZER_KINDS[tokenizer.pop("kind")]
    return config


def _csv_history(metrics_csv: Path) -> list[dict[str, float]]:
    """val_history from an older run dir's csv/metrics.csv: the rows that logged val/loss."""
    metrics = pd.read_csv(metrics_csv) if metrics_csv.is_file() else pd.DataFrame()
    if "val/loss" not in metrics:
        return []
    rows = metrics.dropna(subset=["val/loss"]).rename(columns={"val/loss": "val_loss", "val/acc": "val_acc"})
    return rows.reindex(columns=["step", "val_loss", "val_acc"]).to_dict("records")


def read_summary(path: Path) -> dict[str, Any]:
    """One run from its summary JSON; beside a summary.json, an older run dir's config.yaml and metrics CSV."""
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompareError(f"{path} is not JSON: {err}") from None
    if not isinstance(summary, dict):
        raise CompareError(f"{path} is not a run summary (a JSON object)")
    run_dir = path.parent
    if path.name == "summary.json":
        if "config" not in summary and (run_dir / "config.yaml").is_file():
            from omegaconf import OmegaConf

            summary["config"] = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
        if "val_history" not in summary:
            summary["val_history"] = _csv_history(run_dir / "csv" / "metrics.csv")
    return complete_summary(summary, str(run_dir if path.name == "summary.json" else path))


def find_summaries(path: Path) -> list[Path]:
    """A summary JSON itself; in a dir, every summary.json below it, else the *.json files in it (copied summaries,
    as in docs/results/<experiment>/runs/, less compare's own compare.json)."""
    if path.is_file():
        return [path]
    return sorted(path.rglob("summary.json")) or sorted(p for p in path.glob("*.json") if p.name != TABLE_JSON)


def config_from_wandb(hparams: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of a W&B run: nested under "config", or flattened by train.py into "config/..." keys."""
    if isinstance(hparams.get("config"), dict):
        return hparams["config"]
    config: dict[str, Any] = {}
    for key, value in hparams.items():
        if key.startswith("config/"):
            *parents, leaf = key.removeprefix("config/").split("/")
            node = config
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return config


def load_wandb(spec: str) -> list[dict[str, Any]]:
    """Every run of a W&B group, `wandb:entity/project/group`, through the public API (needs the network)."""
    parts = spec.removeprefix("wandb:").split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise CompareError(f"{spec} is not wandb:entity/project/group")
    entity, project, group = parts
    import wandb

    try:
        runs = list(wandb.Api().runs(f"{entity}/{project}", filters={"group": group}))
    except wandb.errors.Error as err:  # no API key, or no answer from the server (no network)
        raise CompareError(
            f"{spec}: cannot read W&B ({type(err).__name__}: {str(err).splitlines()[0]}); a wandb: source needs "
            "network and an API key (WANDB_API_KEY or `wandb login`); offline runs compare from their run dirs"
        ) from None
    summaries = []
    for run in runs:
        if run.state in ("running", "pending"):
            print(f"note: W&B run {run.id} ({run.name}) is {run.state}: not compared", file=sys.stderr)
            continue
        hparams = dict(run.config)
        summary = {k: v for k, v in hparams.items() if "/" not in k and k != "config"}  # train.py's hyperparameters
        summary |= {ours: run.summary_metrics[theirs] for ours, theirs in LIGHTNING_METRICS.items()
                    if theirs in run.summary_metrics}
        summary |= dict(run.summary_metrics)  # summary.json, which train.py adds to the run's summary
        summary.setdefault("config", config_from_wandb(hparams))
        if run.state != "finished":
            summary.setdefault("status", "failed")
            summary.setdefault("error", f"W&B run state {run.state}")
        if "val_history" not in summary:
            history = run.scan_history(keys=["trainer/global_step", "val/loss", "val/acc"])
            summary["val_history"] = [
                {"step": row["trainer/global_step"], "val_loss": row["val/loss"], "val_acc": row["val/acc"]}
                for row in history
            ]
        summaries.append(complete_summary(summary, f"wandb:{entity}/{project}/{run.id}"))
    if not summaries:
        raise CompareError(f"{spec}: no run to compare in W&B group {group!r} of {entity}/{project}")
    return summaries


def load_summaries(sources: Sequence[str]) -> list[dict[str, Any]]:
    """The summaries of every run in `sources` (an input inside another is read once)."""
    summaries, seen = [], set()
    for source in sources:
        if source.startswith("wandb:"):
            summaries += load_wandb(source)
            continue
        path = Path(source)
        if not path.exists():
            raise CompareError(f"{source} does not exist (nor is it wandb:entity/project/group)")
        found = find_summaries(path)
        if not found:
            raise CompareError(f"{source} holds no run (no summary.json below it, no *.json in it)")
        new = [p for p in found if p.resolve() not in seen]
        seen.update(p.resolve() for p in new)
        summaries += [read_summary(p) for p in new]
    return summaries


def runs_frame(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row a run: RUN_FIELDS and NESTED_FIELDS' columns (NaN where a summary lacks the field)."""
    flat = pd.json_normalize([{k: v for k, v in s.items() if k != "config"} for s in summaries])
    return flat.rename(columns=NESTED_FIELDS).reindex(columns=[*RUN_FIELDS, *NESTED_FIELDS.values()])


# ------------------------------------------------------------------------------------------------ comparing


def mean_ci(grouped: DataFrameGroupBy) -> pd.DataFrame:
    """Per group and column: `<column>_mean`, `_sd` (n - 1), `_n` and `_ci`, the half-width of the 95% t-interval
    of the mean, t(0.975, n - 1) x sd / sqrt(n) (NaN for n < 2)."""
    stats = grouped.agg(["mean", "std", "count"])
    columns = {}
    for name in stats.columns.get_level_values(0).unique():
        mean, sd, n = stats[name, "mean"], stats[name, "std"], stats[name, "count"]
        ci = scipy.stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
        columns |= {f"{name}_mean": mean, f"{name}_sd": sd, f"{name}_n": n, f"{name}_ci": ci}
    return pd.DataFrame(columns)


def group_headers(keys: Sequence[str]) -> dict[str, str]:
    """Each group key -> the settings on which it differs from the other groups ("" for a single group)."""
    configs = {key: json.loads(key) for key in keys}
    names = sorted(set().union(*configs.values()))
    differing = [n for n in names if len({json.dumps(c.get(n, "unset")) for c in configs.values()}) > 1]
    return {key: ", ".join(f"{n}={c.get(n, 'unset')}" for n in differing) for key, c in configs.items()}


@dataclass
class Comparison:
    """The runs of one comparison and what compare makes of them."""

    metric: str  # "final" or "best": the validation loss (and accuracy) compared
    runs: pd.DataFrame  # the runs compared: status ok, one a (group, variant, seed); `loss`, `acc` = the metric's
    variants: pd.DataFrame  # one row a (group, attention, rank): mean_ci of QUANTITIES, twin, changes vs the twin
    headers: dict[str, str]  # group key -> what sets it apart (group_headers), the group with most runs first
    set_apart: pd.DataFrame  # run, reason: runs that repeat a (group, variant, seed)
    failed: pd.DataFrame  # failed and diverged runs
    skipped: int  # skipped jobs, only counted


def compare_runs(frame: pd.DataFrame, metric: str = "final") -> Comparison:
    """Group, average over seeds and pair each variant with its twin (see the module docstring)."""
    ok = frame[frame.status == "ok"]
    repeats = ok.duplicated(["group", "attention", "rank", "seed"])
    first = ok.groupby(["group", "attention", "rank", "seed"], dropna=False).run.transform("first")
    set_apart = pd.DataFrame({"run": ok.run[repeats], "reason": "repeats " + first[repeats]})
    runs = ok[~repeats].assign(loss=ok[f"val_loss_{metric}"], acc=ok[f"val_acc_{metric}"])
    counts = runs.group.value_counts()
    headers = group_headers(sorted(counts.index, key=lambda key: (-counts[key], key)))

    by_variant = runs.groupby(VARIANT, dropna=False)
    variants = mean_ci(by_variant[QUANTITIES]).join(
        by_variant.agg(twin=("twin", "first"), seeds=("seed", list), runs=("run", list))
    )
    # A twin has no latent (rank NaN); it may have a twin of its own (mha_rope's is mha: RoPE against learned
    # positions), so each row of the paired table changes one thing.
    twins = runs[runs["rank"].isna()]
    paired = runs.merge(
        twins[["group", "attention", "seed", "loss", "acc"]].rename(
            columns={"attention": "twin", "loss": "twin_loss", "acc": "twin_acc"}
        ),
        on=["group", "twin", "seed"],
        validate="many_to_one",
    )
    paired = paired.assign(
        loss_change=paired.loss - paired.twin_loss,
        loss_change_pct=100 * (paired.loss / paired.twin_loss - 1),
        acc_change=paired.acc - paired.twin_acc,
    )
    variants = variants.join(mean_ci(paired.groupby(VARIANT, dropna=False)[CHANGES])).reset_index()
    twin_kv = twins.groupby(["group", "attention"]).kv_elements.mean().rename_axis(["group", "twin"]).rename("twin_kv")
    variants = variants.join(twin_kv, on=["group", "twin"])
    variants["kv_change_pct"] = 100 * (variants.kv_elements_mean / variants.twin_kv - 1)
    # Each baseline, then its variants, by name and rank (largest first).
    order = variants.assign(
        _group=variants.group.map({key: i for i, key in enumerate(headers)}),
        _family=variants.twin.fillna(variants.attention),
        _is_variant=variants.twin.notna(),
    ).sort_values(["_group", "_family", "_is_variant", "attention", "rank"], ascending=[True] * 4 + [False])
    return Comparison(
        metric=metric,
        runs=runs,
        variants=variants.loc[order.index].reset_index(drop=True),
        headers=headers,
        set_apart=set_apart,
        failed=frame[~frame.status.isin(["ok", "skipped"])],
        skipped=int((frame.status == "skipped").sum()),
    )


def compare(sources: Sequence[str], metric: str = "final") -> Comparison:
    """Load the runs of `sources` and compare them."""
    return compare_runs(runs_frame(load_summaries(sources)), metric)


# ------------------------------------------------------------------------------------------------- the tables


def fraction_of_d(rank: float) -> str:
    """0.5 -> d/2, 0.25 -> d/4, 1 -> d, 0.75 -> 0.75d: the latent dim as the paper writes it."""
    inverse = 1 / rank
    if abs(inverse - round(inverse)) < 1e-9:
        return "d" if round(inverse) == 1 else f"d/{round(inverse)}"
    return f"{rank:g}d"


def label(attention: str, rank: float) -> str:
    return attention + ("" if pd.isna(rank) else f" r={fraction_of_d(rank)}")


def _si(value: float) -> str:
    if pd.isna(value):
        return "–"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def _plus_minus(mean: float, spread: float, digits: int = 4) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if pd.isna(spread) else f" ± {spread:.{digits}f}")


def interval(row: pd.Series, name: str, digits: int = 4, unit: str = "") -> str:
    """`+0.0300 [-0.0197, +0.0797]`: the mean of `name` and its 95% interval (the mean alone for n < 2)."""
    mean, ci = row[f"{name}_mean"], row[f"{name}_ci"]
    if pd.isna(mean):
        return "–"
    text = f"{mean:+.{digits}f}{unit}"
    return text if pd.isna(ci) else text + f" [{mean - ci:+.{digits}f}{unit}, {mean + ci:+.{digits}f}{unit}]"


def verdict(row: pd.Series, name: str) -> str:
    """Whether the paired change `name` is below or above 0, as far as its 95% interval over seeds says."""
    n = 0 if pd.isna(row[f"{name}_n"]) else int(row[f"{name}_n"])
    mean, ci = row[f"{name}_mean"], row[f"{name}_ci"]
    if n == 0:
        return "no seed paired with the twin"
    if n < 2:
        return "n=1: no interval"
    if mean - ci <= 0 <= mean + ci:
        return f"not distinguishable at {n} seeds"
    return "lower" if mean < 0 else "higher"


def variant_table(comparison: Comparison, key: str) -> str:
    """One row a variant of group `key`: size, cache, loss and accuracy (mean ± 95% CI), judge scores (± sd)."""
    metric = comparison.metric
    lines = [
        f"| variant | rank | twin | n | params | KV bytes/token | KV vs twin | val loss ({metric}) | "
        f"val acc ({metric}) | judge valid | judge consistent | tokens/s |",
        "|" + "---|" * 12,
    ]
    for _, row in comparison.variants[comparison.variants.group == key].iterrows():
        cells = [
            row.attention,
            "n/a" if pd.isna(row["rank"]) else f"{row['rank']:g} ({fraction_of_d(row['rank'])})",
            "baseline" if pd.isna(row.twin) else row.twin,
            f"{row.loss_n:.0f}",
            _si(row.params_mean),
            "–" if pd.isna(row.kv_bytes_mean) else f"{row.kv_bytes_mean:,.0f}",
            "–" if pd.isna(row.kv_change_pct) else f"{row.kv_change_pct:+.1f}%",
            _plus_minus(row.loss_mean, row.loss_ci),
            _plus_minus(row.acc_mean, row.acc_ci),
            _plus_minus(row.judge_valid_mean, row.judge_valid_sd, 3),
            _plus_minus(row.judge_consistent_mean, row.judge_consistent_sd, 3),
            _si(row.tokens_per_s_mean),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(comparison: Comparison, key: str) -> str:
    """One row a variant of group `key` that has a twin: its changes against the twin, paired by seed."""
    lines = [
        "| variant | vs twin | paired seeds | Δ val loss [95% CI] | Δ val loss, % [95% CI] | loss verdict | "
        "Δ val acc [95% CI] | acc verdict |",
        "|" + "---|" * 8,
    ]
    rows = comparison.variants[(comparison.variants.group == key) & comparison.variants.twin.notna()]
    for _, row in rows.iterrows():
        cells = [
            label(row.attention, row["rank"]),
            row.twin,
            "0" if pd.isna(row.loss_change_n) else f"{row.loss_change_n:.0f}",
            interval(row, "loss_change"),
            interval(row, "loss_change_pct", 2, "%"),
            verdict(row, "loss_change"),
            interval(row, "acc_change"),
            verdict(row, "acc_change"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(rows) else ""


def group_title(comparison: Comparison, key: str) -> str:
    runs = comparison.runs[comparison.runs.group == key]
    if len(comparison.headers) == 1:
        return f"All {len(runs)} runs (one comparable group)"
    return f"Group {list(comparison.headers).index(key) + 1}: {comparison.headers[key]} ({len(runs)} runs)"


def markdown(comparison: Comparison, level: int = 2) -> str:
    """compare.md: each comparable group's tables, then the runs set apart, failed or skipped."""
    heading = "#" * level
    parts = []
    for key in comparison.headers:
        floor = comparison.runs.entropy_floor[comparison.runs.group == key].mean()
        parts += [
            f"{heading} {group_title(comparison, key)}\n",
            "Validation loss and accuracy: mean ± 95% t-interval over seeds; judge scores: mean ± sd."
            + ("" if pd.isna(floor) else f" Entropy floor of the validation data: {floor:.4f} nats/token.")
            + "\n",
            variant_table(comparison, key),
            paired_table(comparison, key),
            time_line(comparison.runs[comparison.runs.group == key]),
        ]
    if len(comparison.set_apart):
        parts.append(f"{heading} Set apart\n\nA second run of one config, variant and seed; the first is compared.\n")
        parts.append("".join(f"- {r.run}: {r.reason}\n" for r in comparison.set_apart.itertuples()))
    if len(comparison.failed):
        parts += [f"{heading} Failed or diverged runs\n", "| run | variant | seed | status | error |", "|" + "---|" * 5]
        parts += [
            f"| {r.run} | {label(r.attention, r.rank)} | {'?' if pd.isna(r.seed) else f'{r.seed:.0f}'} | {r.status} "
            f"| {'' if pd.isna(r.error) else str(r.error).splitlines()[0].replace('|', '/')} |"
            for r in comparison.failed.itertuples()
        ]
        parts.append("")
    if comparison.skipped:
        parts.append(f"{comparison.skipped} skipped job(s) (duplicates in a sweep, never trained) left out.\n")
    return "\n".join(parts)


def time_line(runs: pd.DataFrame) -> str:
    """The wall time these runs took together, by phase (summary.json's `timings`; older runs have none)."""
    timed = runs[runs.time_total.notna()]
    if timed.empty:
        return ""
    phases = ", ".join(f"{p.replace('_', ' ')} {timed[f'time_{p}'].sum():.0f} s" for p in PHASES)
    return (f"Wall time of the {len(timed)} timed runs, added up: {timed.time_total.sum() / 60:.1f} min = "
            f"{phases} (latentlm.timings says what each phase holds).\n")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))  # NaN -> null, numpy -> plain numbers


def to_json(comparison: Comparison) -> dict[str, Any]:
    variants = comparison.variants
    return {
        "metric": f"val_loss_{comparison.metric}",
        "groups": [
            {
                "config": json.loads(key),
                "differs_by": header,
                "variants": _records(variants[variants.group == key].drop(columns="group")),
            }
            for key, header in comparison.headers.items()
        ],
        "set_apart": _records(comparison.set_apart),
        "failed": _records(comparison.failed.drop(columns=["val_history", "group"])),
        "skipped": comparison.skipped,
    }


# ------------------------------------------------------------------------------------------------- the plots


def _styles(attentions: Sequence[str], ranks: Sequence[float]) -> tuple[dict[str, Any], dict[float, str]]:
    """One colour an attention, one line style a rank (solid: the largest rank, or n/a)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    colours = {a: palette[i % len(palette)] for i, a in enumerate(sorted(set(attentions)))}
    dashes = ["-", "--", ":", "-."]
    known = sorted({r for r in ranks if not pd.isna(r)}, reverse=True)
    return colours, {r: dashes[i % len(dashes)] for i, r in enumerate(known)}


def _history(runs: pd.DataFrame) -> pd.DataFrame:
    """One row a (run, validation) of the runs' val_history. A loss equal to the run's previous one is dropped: it
    is train.py's validation after fit, of the weights that the last validation in fit saw, a step later."""
    history = runs[[*VARIANT, "run", "val_history"]].explode("val_history", ignore_index=True)
    history = history.dropna(subset=["val_history"])
    points = pd.DataFrame(history.val_history.tolist(), index=history.index, columns=["step", "val_loss"])
    history = history.drop(columns="val_history").join(points)
    return history[history.val_loss.ne(history.groupby("run").val_loss.shift())]


def plot_curves(comparison: Comparison, path: Path):
    """Validation loss against step per group (a row): the whole run and its second half, mean ± 95% CI."""
    from matplotlib.figure import Figure

    history = _history(comparison.runs)
    curves = mean_ci(history.groupby([*VARIANT, "step"], dropna=False)[["val_loss"]]).reset_index()
    colours, dashes = _styles(curves.attention, curves["rank"])
    fig = Figure(figsize=(12, 4.5 * len(comparison.headers)), layout="constrained")
    panels = fig.subplots(len(comparison.headers), 2, squeeze=False)
    for (full, zoom), key in zip(panels, comparison.headers, strict=True):
        group = curves[curves.group == key]
        for (attention, rank), curve in group.groupby(["attention", "rank"], dropna=False):
            style = {"color": colours[attention], "linestyle": dashes.get(rank, "-")}
            for ax, part in ((full, curve), (zoom, curve[curve.step >= group.step.max() / 2])):
                ax.plot(part.step, part.val_loss_mean, marker="o", markersize=3, label=label(attention, rank), **style)
                low, high = part.val_loss_mean - part.val_loss_ci, part.val_loss_mean + part.val_loss_ci
                ax.fill_between(part.step, low, high, color=style["color"], alpha=0.15, linewidth=0)
        floor = comparison.runs.entropy_floor[comparison.runs.group == key].mean()
        if not pd.isna(floor):
            full.axhline(floor, color="grey", linestyle=":", linewidth=1, label=f"entropy floor {floor:.3f}")
        full.set_title(f"{group_title(comparison, key)}: mean ± 95% CI over seeds", fontsize=9)
        zoom.set_title("second half of training", fontsize=9)
        for ax in (full, zoom):
            ax.set(xlabel="step", ylabel="val loss (nats/token)")
            ax.grid(alpha=0.3)
        full.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points no other point beats on both x and y (smaller is better), by increasing x."""
    ordered = points.sort_values([x, y])
    return ordered[ordered[y] < ordered[y].cummin().shift(fill_value=np.inf)]


def plot_pareto(comparison: Comparison, path: Path):
    """Validation loss against KV-cache bytes per token per group (a panel): mean, 95% CI bars, Pareto front."""
    from matplotlib.figure import Figure

    variants = comparison.variants.dropna(subset=["kv_bytes_mean", "loss_mean"])
    colours, _ = _styles(variants.attention, variants["rank"])
    fig = Figure(figsize=(7.5 * len(comparison.headers), 5), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(comparison.headers), squeeze=False)[0], comparison.headers, strict=True):
        group = variants[variants.group == key].assign(kib=lambda v: v.kv_bytes_mean / 1024)
        front = pareto_front(group, "kib", "loss_mean")
        ax.plot(front.kib, front.loss_mean, color="black", linewidth=1, alpha=0.5, label="Pareto front")
        for _, row in group.iterrows():
            ax.errorbar(row.kib, row.loss_mean, yerr=np.nan_to_num(row.loss_ci), fmt="o", capsize=3,
                        color=colours[row.attention], markeredgecolor="black" if row.name in front.index else "none")
            ax.annotate(f"{label(row.attention, row['rank'])}, n={row.loss_n:.0f}", (row.kib, row.loss_mean),
                        textcoords="offset points", xytext=(7, 5), fontsize=8)
        ax.set(xlabel="KV cache per token (KiB, bf16, all layers)", ylabel=f"val loss {comparison.metric} (nats/token)")
        ax.set_title(f"{group_title(comparison, key)}: mean ± 95% CI over seeds", fontsize=9)
        ax.set_xlim(left=0, right=max(group.kib.max(), 1) * 1.25)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=120)
    return fig


def plot_twins(comparison: Comparison, path: Path):
    """Each variant's val loss against its twin's, paired by seed (%, mean and 95% CI), one row a variant by KV cache
    size, per group (a panel): the comparison the product makes, where the Pareto plot's absolute losses overlap.
    A black marker: the interval excludes 0 (distinguishable); grey: it holds 0, or n < 2 (no interval)."""
    from matplotlib.figure import Figure

    paired = comparison.variants.dropna(subset=["twin", "loss_change_pct_mean"])
    rows = max([1, *paired.groupby("group").size()])
    fig = Figure(figsize=(7.5 * len(comparison.headers), max(4, 1.2 + 0.32 * rows)), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(comparison.headers), squeeze=False)[0], comparison.headers, strict=True):
        group = paired[paired.group == key].sort_values(["kv_bytes_mean", "attention", "rank"], ascending=False)
        for y, (_, row) in enumerate(group.iterrows()):
            ci = row.loss_change_pct_ci
            resolved = not pd.isna(ci) and abs(row.loss_change_pct_mean) > ci
            ax.errorbar(row.loss_change_pct_mean, y, xerr=np.nan_to_num(ci), fmt="o", capsize=3,
                        color="black" if resolved else "grey")
        labels = [f"{label(r.attention, r['rank'])} vs {r.twin} ({r.kv_change_pct:+.0f}% KV, "
                  f"n={r.loss_change_pct_n:.0f})" for _, r in group.iterrows()]
        ax.set_yticks(range(len(group)), labels, fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set(xlabel=f"val loss ({comparison.metric}) vs twin, % (paired by seed, mean ± 95% CI)")
        ax.set_title(group_title(comparison, key), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=120)
    return fig


# ------------------------------------------------------------------------------------------------------- CLI


def write(comparison: Comparison, out: Path, plots: bool = True) -> list[Path]:
    """compare.md, compare.json and (with `plots`, when a run finished) the three plots, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE_MD).write_text(markdown(comparison))
    (out / TABLE_JSON).write_text(json.dumps(to_json(comparison), indent=2) + "\n")
    written = [out / TABLE_MD, out / TABLE_JSON]
    if plots and len(comparison.runs):
        plot_curves(comparison, out / CURVES_PNG)
        plot_pareto(comparison, out / PARETO_PNG)
        plot_twins(comparison, out / TWINS_PNG)
        written += [out / CURVES_PNG, out / PARETO_PNG, out / TWINS_PNG]
    return written


def default_out(source: str) -> Path:
    """Where the outputs go by default: the first input dir (a file's dir), logs/compare/<group> for W&B."""
    if source.startswith("wandb:"):
        return Path("logs") / "compare" / source.rsplit("/", 1)[-1]
    return Path(source) if Path(source).is_dir() else Path(source).parent


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latentlm.compare",
        description="Compare attention variants with their twins over seeds, in comparable groups: tables and plots.",
    )
    parser.add_argument(
        "sources", nargs="+", help="run dirs, dirs holding them, summary JSONs, or wandb:entity/project/group"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the tables and plots go (default: first input)")
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default="final",
        help="val_loss_final (default: the whole validation split at the end of the budget) or val_loss_best "
        "(the minimum over the run's validations)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    try:
        comparison = compare(args.sources, args.metric)
        written = write(comparison, args.out or default_out(args.sources[0]), plots=not args.no_plots)
    except CompareError as err:
        fail(err)
    print(markdown(comparison), end="")
    print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)


if __name__ == "__main__":
    main()
