"""The compare tool and the report (latentlm.compare, latentlm.report), the sweep experiments and what W&B keeps
of an offline run.

The expected numbers of the synthetic runs are worked out by hand in the comments; t(0.975, 2) = 4.302653 and
t(0.975, 1) = 12.706205 are read from a t-table.
"""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, read_metrics, run_train, series
from matplotlib.image import imread

from latentlm import compare, report
from latentlm.config import compose_train, group_choices, register_resolvers
from latentlm.timings import PHASES

register_resolvers()
PLOTS = (compare.CURVES_PNG, compare.PARETO_PNG, compare.TWINS_PNG)

# ------------------------------------------------------------------------------------- synthetic summaries

GQA, LATENT = "latentlm.model.attention.gqa.GroupedQueryAttention", "latentlm.model.attention.latent.LatentAttention"
ATTENTION = {  # configs/attention/*.yaml, as the resolved config holds them (the twin as the issue names it)
    "mha_rope": {"name": "mha_rope", "_target_": GQA, "n_kv_heads": None, "rope": True, "twin": None},
    "gqa": {"name": "gqa", "_target_": GQA, "n_kv_heads": 2, "rope": True, "twin": "mha_rope"},
    "mla_rope": {"name": "mla_rope", "_target_": LATENT, "rank": 0.5, "rope_dim": None, "twin": "mha_rope"},
}
CONFIG = {  # a resolved config (train.yaml's keys, fewer settings in each group)
    "model": {"_target_": "latentlm.model.GPT", "d_model": 128, "n_layer": 4, "n_head": 4, "block_size": 128},
    "data": {"source": "synthetic", "num_stories": 1000, "val_stories": 100, "batch_size": 8, "seq_len": 128,
             "cache_dir": "/root/data", "num_workers": 0},
    "tokenizer": {"kind": "bpe", "vocab_size": 384},
    "optimizer": {"lr": 0.001},
    "scheduler": {"warmup_steps": 10},
    "trainer": {"max_steps": 100, "precision": "auto", "log_every_n_steps": 10, "default_root_dir": "/root/logs"},
    "logger": {"csv": {"save_dir": "/root/logs"}},
    "paths": {"root_dir": "/root"},
    "label_smoothing": 0.1,
    "compile": "auto",
    "task_name": "paper_mla",
}


def summary(attention, seed, loss, acc=0.5, *, rank=None, kv=1024, judge=None, sweep="s1", changes=None, **fields):
    """A run's summary.json in train.py's schema; `changes` sets dotted config keys ({"model.d_model": 32})."""
    config = copy.deepcopy(CONFIG) | {"seed": seed, "rank": rank, "sweep_id": sweep}
    config["attention"] = config["model"]["attention"] = dict(ATTENTION[attention], rank=rank)
    config["paths"]["output_dir"] = f"/root/logs/{sweep}/{attention}_s{seed}"  # differs for every run
    for key, value in (changes or {}).items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return {
        "status": "ok",
        "error": None,
        "experiment": "paper_mla",
        "sweep_id": sweep,
        "attention": attention,
        "twin": ATTENTION[attention]["twin"],
        "rank": rank,
        "model": "tiny",
        "seed": seed,
        "params": 1_000_000,
        "params_non_embedding": 900_000,
        "kv_cache": {"elements_per_token_per_layer": [kv // 4] * 4, "elements_per_token": kv,
                     "bytes_per_token_bf16": 2 * kv},
        "val_loss_best": None if loss is None else loss - 0.1,  # --metric best: every loss 0.1 lower
        "val_loss_final": loss,
        "val_acc_best": None if acc is None else acc + 0.1,
        "val_acc_final": acc,
        "val_ppl_final": None,
        "val_history": [] if loss is None else [{"step": 50, "val_loss": loss + 1, "val_acc": acc - 0.1},
                                                 {"step": 100, "val_loss": loss, "val_acc": acc}],
        "entropy_floor": 1.5,
        "gap_to_floor": None if loss is None else loss - 1.5,
        "judge": judge,
        "tokens_per_s": 1000.0,
        "steps": 100,
        "tokens": 102_400,
        "wall_time_s": 60.0,
        "precision": "32-true",
        "device": "cpu",
        "git_commit": "0123456789abcdef",
        "config": config,
        **fields,
    }


def judge(valid, consistent):
    return {"n": 4, "valid_share": valid, "valid_prefix_share": valid, "consistent_share": consistent,
            "mean_words": 100.0, "rule_failures": {}}


# The twin pair of the tests, all in one comparable group:
#   mha_rope (the baseline), seeds 0-2: loss 2.00, 2.10, 2.20   acc 0.50, 0.52, 0.54   KV 1024 elements
#   mla_rope r=0.5, seeds 0-2:          loss 2.03, 2.11, 2.25   acc 0.50, 0.53, 0.53   KV 288
#   gqa, seeds 0-3 (3 has no twin run): loss 2.10, 2.21, 2.32, 2.50   acc 0.47, 0.48, 0.49, 0.40   KV 256
RUNS = [
    summary("mha_rope", 0, 2.00, 0.50, judge=judge(0.5, 0.8)),
    summary("mha_rope", 1, 2.10, 0.52, judge=judge(0.6, 0.8)),
    summary("mha_rope", 2, 2.20, 0.54, judge=judge(0.7, 0.8)),
    summary("mla_rope", 0, 2.03, 0.50, rank=0.5, kv=288),
    summary("mla_rope", 1, 2.11, 0.53, rank=0.5, kv=288),
    summary("mla_rope", 2, 2.25, 0.53, rank=0.5, kv=288),
    summary("gqa", 0, 2.10, 0.47, kv=256),
    summary("gqa", 1, 2.21, 0.48, kv=256),
    summary("gqa", 2, 2.32, 0.49, kv=256),
    summary("gqa", 3, 2.50, 0.40, kv=256),
]


def write_runs(root: Path, summaries) -> Path:
    """Run dirs as train.py leaves them: <root>/<attention>_r<rank>_s<seed>/summary.json."""
    for s in summaries:
        run_dir = root / s["sweep_id"] / f"{s['attention']}_r{s['rank']}_s{s['seed']}"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps(s))
    return root


def variant(comparison, attention, rank=None, **config):
    """The row of `attention` (at `rank`) in the group whose key holds `config` (dotted keys)."""
    rows = comparison.variants[comparison.variants.attention == attention]
    rows = rows[rows["rank"].isna() if rank is None else rows["rank"] == rank]
    rows = rows[[all(json.loads(g).get(k) == v for k, v in config.items()) for g in rows.group]]
    (row,) = [r for _, r in rows.iterrows()]
    return row


@pytest.fixture
def sweep(tmp_path) -> Path:
    return write_runs(tmp_path / "sweep", RUNS)


# ------------------------------------------------------------------------------------------ the statistics


def test_seeds_averaged_with_a_t_interval(sweep):
    comparison = compare.compare([str(sweep)])
    mha = variant(comparison, "mha_rope")
    # losses 2.0, 2.1, 2.2: mean 2.1, sd 0.1, half-width 4.302653 x 0.1 / sqrt(3) = 0.248414
    assert (mha.loss_mean, mha.loss_sd, mha.loss_n) == (pytest.approx(2.1), pytest.approx(0.1), 3)
    assert mha.loss_ci == pytest.approx(0.248414, abs=1e-6)
    assert mha.judge_valid_mean == pytest.approx(0.6) and mha.judge_valid_sd == pytest.approx(0.1)
    gqa = variant(comparison, "gqa")
    assert gqa.loss_n == 4 and gqa.loss_mean == pytest.approx(9.13 / 4)  # its own mean keeps the unpaired seed 3
    assert pd.isna(variant(comparison, "mla_rope", 0.5).judge_valid_mean)  # no judge in its summaries
    # KV against the twin: 288 / 1024 - 1 = -71.875%, 256 / 1024 - 1 = -75%
    assert variant(comparison, "mla_rope", 0.5).kv_change_pct == pytest.approx(-71.875)
    assert variant(comparison, "gqa").kv_change_pct == pytest.approx(-75.0)


def test_differences_are_paired_by_seed_with_the_twin(sweep):
    comparison = compare.compare([str(sweep)])
    mla = variant(comparison, "mla_rope", 0.5)
    # mla_rope - mha_rope per seed: 0.03, 0.01, 0.05: mean 0.03, sd 0.02, half-width 4.302653 x 0.02 / sqrt(3)
    # = 0.049683: [-0.0197, +0.0797] holds 0
    assert (mla.loss_change_mean, mla.loss_change_sd, mla.loss_change_n) == (
        pytest.approx(0.03),
        pytest.approx(0.02),
        3,
    )
    assert mla.loss_change_ci == pytest.approx(0.049683, abs=1e-6)
    assert compare.verdict(mla, "loss_change") == "not distinguishable at 3 seeds"
    # in percent of the twin: 1.5, 0.476190, 2.272727 -> mean 1.416306
    assert mla.loss_change_pct_mean == pytest.approx(1.416306, abs=1e-6)
    # accuracy: 0, +0.01, -0.01: mean 0, sd 0.01
    assert mla.acc_change_mean == pytest.approx(0, abs=1e-12) and mla.acc_change_sd == pytest.approx(0.01)
    gqa = variant(comparison, "gqa")
    # gqa seed 3 has no mha_rope run: 3 pairs, 0.10, 0.11, 0.12: mean 0.11, sd 0.01, half-width 0.024841
    assert (gqa.loss_change_n, gqa.loss_change_mean) == (3, pytest.approx(0.11))
    assert gqa.loss_change_ci == pytest.approx(0.024841, abs=1e-6)
    assert compare.verdict(gqa, "loss_change") == "higher"  # [0.0852, 0.1348]
    # accuracy -0.03, -0.04, -0.05: mean -0.04, half-width 0.024841: [-0.0648, -0.0152]
    assert gqa.acc_change_mean == pytest.approx(-0.04) and compare.verdict(gqa, "acc_change") == "lower"


def test_best_metric_is_selectable(sweep):
    comparison = compare.compare([str(sweep)], metric="best")
    mha = variant(comparison, "mha_rope")
    assert mha.loss_mean == pytest.approx(2.0) and mha.acc_mean == pytest.approx(0.62)  # 0.1 lower, 0.1 higher


def test_one_seed_has_no_interval(tmp_path):
    runs = write_runs(tmp_path, [summary("mha_rope", 0, 2.0), summary("mla_rope", 0, 2.1, rank=0.5, kv=288)])
    mla = variant(compare.compare([str(runs)]), "mla_rope", 0.5)
    assert mla.loss_change_n == 1 and compare.verdict(mla, "loss_change") == "n=1: no interval"
    assert compare.interval(mla, "loss_change") == "+0.1000"  # the mean alone


def test_pareto_front():
    #                      MHA   MLA r=d/2  dominated  MLA r=d/4
    points = pd.DataFrame({"kv": [16.0, 4.5, 4.5, 2.5], "loss": [2.0, 2.05, 2.3, 2.2]})
    assert list(compare.pareto_front(points, "kv", "loss").index) == [3, 1, 0]


# ------------------------------------------------------------------------------------------- comparable groups


def test_runs_are_grouped_by_their_resolved_config(tmp_path):
    smoke = [  # d_model 32: KV 2 x 32 x 2 layers for mha_rope, 48 for mla_rope (would be -150% against d_model 128)
        summary("mha_rope", 0, 3.0, kv=128, sweep="smoke", changes={"model.d_model": 32}),
        summary("mla_rope", 0, 3.1, rank=0.5, kv=48, sweep="smoke", changes={"model.d_model": 32}),
    ]
    other_data = summary("mha_rope", 0, 1.8, sweep="s2", changes={"data.num_stories": 2000})
    on_gpu = summary("mha_rope", 0, 1.9, sweep="gpu", precision="bf16-mixed")  # trainer.precision=auto resolved
    elsewhere = summary("mla_rope", 3, 2.4, rank=0.5, kv=288, sweep="s3", changes={"data.cache_dir": "/elsewhere"})
    comparison = compare.compare([str(write_runs(tmp_path, [*RUNS, *smoke, other_data, on_gpu, elsewhere]))])
    assert list(comparison.headers.values()) == [  # the most runs first; the headers name what differs
        "data.num_stories=1000, model.d_model=128, trainer.precision=32-true",
        "data.num_stories=1000, model.d_model=32, trainer.precision=32-true",
        "data.num_stories=1000, model.d_model=128, trainer.precision=bf16-mixed",
        "data.num_stories=2000, model.d_model=128, trainer.precision=32-true",
    ]
    assert len(comparison.set_apart) == 0  # the runs on other data or in bf16 repeat no run of mha_rope seed 0
    main = {"model.d_model": 128, "data.num_stories": 1000, "trainer.precision": "32-true"}
    assert variant(comparison, "mha_rope", **main).loss_n == 3
    assert variant(comparison, "mha_rope", **{"data.num_stories": 2000}).loss_mean == pytest.approx(1.8)
    assert variant(comparison, "mha_rope", **{"trainer.precision": "bf16-mixed"}).loss_mean == pytest.approx(1.9)
    small = variant(comparison, "mla_rope", 0.5, **{"model.d_model": 32})
    assert small.kv_change_pct == pytest.approx(-62.5) and small.loss_change_mean == pytest.approx(0.1)
    large = variant(comparison, "mla_rope", 0.5, **main)
    assert large.kv_change_pct == pytest.approx(-71.875) and large.loss_n == 4  # the cache dir does not matter
    table = compare.markdown(comparison)
    assert "## Group 2: data.num_stories=1000, model.d_model=32, trainer.precision=32-true (2 runs)" in table


def test_twin_plot_draws_each_paired_change_with_its_interval(tmp_path):
    """loss_vs_twin.png: a row a variant that has a paired twin, at its mean change in % with its 95% CI, black where
    the interval excludes 0."""
    comparison = compare.compare([str(write_runs(tmp_path, RUNS))])
    ax = compare.plot_twins(comparison, tmp_path / compare.TWINS_PNG).axes[0]
    paired = comparison.variants.dropna(subset=["twin", "loss_change_pct_mean"])
    drawn = {label.get_text().split(" vs ")[0]: bars for label, bars in zip(ax.get_yticklabels(), ax.containers,
                                                                            strict=True)}
    assert len(drawn) == len(paired) > 0
    for _, row in paired.iterrows():
        bars = drawn[compare.label(row.attention, row["rank"])]
        assert bars.lines[0].get_xdata()[0] == pytest.approx(row.loss_change_pct_mean)
        resolved = abs(row.loss_change_pct_mean) > row.loss_change_pct_ci
        assert bars.lines[0].get_color() == ("black" if resolved else "grey")


def test_runs_older_than_a_config_key_compare_with_runs_at_its_equivalent_value(tmp_path):
    """CONFIG has no model.block (older runs): block gpt2 trains as they did, block llama does not."""
    gpt2 = summary("mla_rope", 4, 2.2, rank=0.5, kv=288, sweep="s2", changes={"model.block": "gpt2"})
    llama = summary("mla_rope", 5, 2.6, rank=0.5, kv=288, sweep="s2", changes={"model.block": "llama"})
    comparison = compare.compare([str(write_runs(tmp_path, [*RUNS, gpt2, llama]))])
    assert list(comparison.headers.values()) == ["model.block=gpt2", "model.block=llama"]
    assert variant(comparison, "mla_rope", 0.5, **{"model.block": "gpt2"}).loss_n == 4
    assert variant(comparison, "mla_rope", 0.5, **{"model.block": "llama"}).loss_n == 1


def test_runs_from_before_trainer_strategy_compare_with_runs_at_lightnings_default(tmp_path):
    """CONFIG has no trainer.strategy (older runs, one device): Lightning picked "auto", as newer runs name it;
    DDP is another training (its batches are split over ranks)."""
    auto = summary("mla_rope", 4, 2.2, rank=0.5, kv=288, sweep="s2", changes={"trainer.strategy": "auto"})
    ddp = summary("mla_rope", 5, 2.6, rank=0.5, kv=288, sweep="s2", changes={"trainer.strategy": "ddp"})
    comparison = compare.compare([str(write_runs(tmp_path, [*RUNS, auto, ddp]))])
    assert list(comparison.headers.values()) == ["trainer.strategy=auto", "trainer.strategy=ddp"]
    assert variant(comparison, "mla_rope", 0.5, **{"trainer.strategy": "auto"}).loss_n == 4


def test_runs_from_before_data_and_tokenizer_targets_compare_with_newer_runs(tmp_path):
    """CONFIG names its data source and tokenizer kind (older runs); newer configs name their classes."""
    newer = summary("mla_rope", 4, 2.2, rank=0.5, kv=288, sweep="s2")
    data = newer["config"]["data"]
    data |= {"_target_": compare.DATA_SOURCES[data.pop("source")], "_recursive_": False}
    newer["config"]["tokenizer"] = {"_target_": "latentlm.data.tokenizer.BPE", "vocab_size": 384}
    comparison = compare.compare([str(write_runs(tmp_path, [*RUNS, newer]))])
    assert len(comparison.headers) == 1 and variant(comparison, "mla_rope", 0.5).loss_n == 4


def test_a_repeated_run_is_set_apart_with_the_run_it_repeats(tmp_path):
    repeat = summary("mha_rope", 0, 9.9, sweep="s2")  # the same config, variant and seed in another sweep
    comparison = compare.compare([str(write_runs(tmp_path, [*RUNS, repeat]))])
    first, second = tmp_path / "s1" / "mha_rope_rNone_s0", tmp_path / "s2" / "mha_rope_rNone_s0"
    assert comparison.set_apart.to_dict("records") == [{"run": str(second), "reason": f"repeats {first}"}]
    assert variant(comparison, "mha_rope").loss_mean == pytest.approx(2.1)  # 9.9 is not averaged in
    assert f"- {second}: repeats {first}\n" in compare.markdown(comparison)


def test_failed_runs_are_listed_and_skipped_jobs_counted(tmp_path):
    failed = summary("mla_rope", 3, None, None, rank=0.5, status="failed",
                     error="RuntimeError: CUDA out of memory\nTraceback (most recent call last): ...")
    diverged = summary("gqa", 4, None, None, status="diverged", error="val loss is nan at step 60")
    skipped = summary("mha_rope", 0, None, None, status="skipped", sweep="s2")
    comparison = compare.compare([str(write_runs(tmp_path, [*RUNS, failed, diverged, skipped]))])
    assert variant(comparison, "mla_rope", 0.5).loss_n == 3 and variant(comparison, "gqa").loss_n == 4
    assert comparison.skipped == 1 and len(comparison.set_apart) == 0
    table = compare.markdown(comparison)
    failed_row = "mla_rope r=d/2 | 3 | failed | RuntimeError: CUDA out of memory |"  # the error's first line
    assert f"| {tmp_path / 's1' / 'mla_rope_r0.5_s3'} | {failed_row}" in table
    assert f"| {tmp_path / 's1' / 'gqa_rNone_s4'} | gqa | 4 | diverged | val loss is nan at step 60 |" in table
    assert "| run | variant | seed | status | error |\n|---|---|---|---|---|\n" in table
    assert "1 skipped job(s)" in table and str(tmp_path / "s2") not in table


# ------------------------------------------------------------------------------------------------ the outputs


def test_tables(sweep):
    lines = compare.markdown(compare.compare([str(sweep)])).splitlines()
    assert lines[0] == "## All 10 runs (one comparable group)"
    table = lines[lines.index("| variant | rank | twin | n | params | KV bytes/token | KV vs twin | val loss (final) "
                              "| val acc (final) | judge valid | judge consistent | tokens/s |"):]
    assert table[2:5] == [
        "| mha_rope | n/a | baseline | 3 | 1.00M | 2,048 | – | 2.1000 ± 0.2484 | 0.5200 ± 0.0497 | 0.600 ± 0.100 "
        "| 0.800 ± 0.000 | 1.00k |",
        # 2.10, 2.21, 2.32, 2.50: sd 0.170563, t(0.975, 3) = 3.182446: 3.182446 x 0.170563 / 2 = 0.271405
        "| gqa | n/a | mha_rope | 4 | 1.00M | 512 | -75.0% | 2.2825 ± 0.2714 | 0.4600 ± 0.0650 | – | – | 1.00k |",
        # 2.03, 2.11, 2.25: sd 0.111355, 4.302653 x 0.111355 / sqrt(3) = 0.276627
        "| mla_rope | 0.5 (d/2) | mha_rope | 3 | 1.00M | 576 | -71.9% | 2.1300 ± 0.2766 | 0.5200 ± 0.0430 | – | – "
        "| 1.00k |",
    ]
    paired = table[table.index("| variant | vs twin | paired seeds | Δ val loss [95% CI] | Δ val loss, % [95% CI] "
                               "| loss verdict | Δ val acc [95% CI] | acc verdict |"):]
    assert paired[2:4] == [  # in %: gqa 5.0, 5.238095, 5.454545 (sd 0.227359); mla_rope sd 0.901188
        "| gqa | mha_rope | 3 | +0.1100 [+0.0852, +0.1348] | +5.23% [+4.67%, +5.80%] | higher "
        "| -0.0400 [-0.0648, -0.0152] | lower |",
        "| mla_rope r=d/2 | mha_rope | 3 | +0.0300 [-0.0197, +0.0797] | +1.42% [-0.82%, +3.65%] "
        "| not distinguishable at 3 seeds | +0.0000 [-0.0248, +0.0248] | not distinguishable at 3 seeds |",
    ]


def test_the_sweep_wall_time_is_added_up_by_phase(tmp_path):
    timings = dict.fromkeys(PHASES, 1.0) | {"steps": 20.0, "total": 30.0}
    runs = [{**r, "timings": timings} for r in RUNS[:4]] + RUNS[4:]  # older runs have no timings
    lines = compare.markdown(compare.compare([str(write_runs(tmp_path, runs))])).splitlines()
    assert ("Wall time of the 4 timed runs, added up: 2.0 min = startup 4 s, setup 4 s, fit start 4 s, first step "
            "4 s, steps 80 s, validation 4 s, checkpoints 4 s, between steps 4 s, after fit 4 s (latentlm.timings "
            "says what each phase holds).") in lines


def test_pareto_plot_has_95_percent_error_bars(sweep, tmp_path):
    comparison = compare.compare([str(sweep)])
    fig = compare.plot_pareto(comparison, tmp_path / "pareto.png")
    (ax,) = fig.axes
    bars = {round(c.lines[0].get_xdata()[0], 4): c.lines[2][0].get_segments()[0][:, 1] for c in ax.containers}
    assert bars[2.0] == pytest.approx([2.1 - 0.248414, 2.1 + 0.248414], abs=1e-6)  # mha_rope: 2048 B = 2 KiB
    assert imread(tmp_path / "pareto.png").shape[1] > 600


def test_curves_are_seed_means_without_the_repeated_final_validation(tmp_path):
    runs = copy.deepcopy(RUNS)
    runs[0]["val_history"].append({"step": 101, "val_loss": 2.0, "val_acc": 0.5})  # validation after fit repeats
    fig = compare.plot_curves(compare.compare([str(write_runs(tmp_path, runs))]), tmp_path / "curves.png")
    (mha,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "mha_rope"]
    assert list(mha.get_xdata()) == [50, 100]
    assert list(mha.get_ydata()) == pytest.approx([3.1, 2.1])  # losses + 1 at step 50, losses at step 100


def test_cli_prints_the_tables_and_writes_next_to_the_first_input(sweep):
    proc = subprocess.run(
        [sys.executable, "-m", "latentlm.compare", str(sweep)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (sweep / compare.TABLE_MD).read_text()
    data = json.loads((sweep / compare.TABLE_JSON).read_text())
    (group,) = data["groups"]
    assert data["metric"] == "val_loss_final" and group["differs_by"] == "" and group["config"]["model.d_model"] == 128
    assert [(v["attention"], v["loss_n"]) for v in group["variants"]] == [("mha_rope", 3), ("gqa", 4), ("mla_rope", 3)]
    for name in PLOTS:
        image = imread(sweep / name)
        assert image.shape[0] > 400 and image.shape[1] > 600


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp, "{tmp} holds no run (no summary.json below it, no *.json in it)"),
        (lambda tmp: tmp / "nowhere", "{tmp}/nowhere does not exist (nor is it wandb:entity/project/group)"),
        (lambda tmp: write_file(tmp / "run.json", "[1, 2]"), "{tmp}/run.json is not a run summary (a JSON object)"),
        (lambda tmp: write_file(tmp / "run.json", "{}"), "{tmp}/run.json: no attention name in its summary or config"),
        (lambda tmp: "wandb:me/latentlm", "wandb:me/latentlm is not wandb:entity/project/group"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(make, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(make(tmp_path))])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=tmp_path)}\n"


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------- the report


@pytest.fixture
def results(tmp_path) -> Path:
    """docs/results/paper_mla: runs/*.json as committed (RUNS plus mla_rope at two more ranks), and an intro."""
    folder = tmp_path / "docs" / "results" / "paper_mla"
    (folder / "runs").mkdir(parents=True)
    more_ranks = [  # means: r=0.25: 2.31, r=0.5: 2.13 (RUNS), r=0.75: 2.06
        summary("mla_rope", seed, loss, rank=rank, kv=kv)
        for rank, kv, losses in ((0.25, 160, (2.30, 2.32)), (0.75, 416, (2.05, 2.07)))
        for seed, loss in enumerate(losses)
    ]
    skipped = summary("mha_rope", 0, None, None, status="skipped", sweep="s2")
    for s in [*RUNS, *more_ranks, skipped]:
        name = f"{s['attention']}_r{s['rank']}_s{s['seed']}_{s['sweep_id']}.json"
        (folder / "runs" / name).write_text(json.dumps(s))
    (folder / "intro.md").write_text("The paper says MLA+RoPE at r=d/2 costs +0.3% loss.\n")
    return tmp_path / "docs" / "results"


def test_report_sections_claims_and_links(results):
    out = results.parent / "results.md"
    report.main([str(results), "--out", str(out)])
    text = out.read_text()
    sections = [line for line in text.splitlines() if line.startswith("#")]
    assert sections == [
        "# Results",
        "## paper_mla",
        "### Setup",
        "### Results",
        "#### All 14 runs (one comparable group)",
        "### Plots",
        "### Claims",
        "## How to reproduce",
    ]
    assert "## paper_mla\n\nThe paper says MLA+RoPE at r=d/2 costs +0.3% loss.\n" in text  # intro.md, verbatim
    assert "| `model.d_model` | 128 |" in text and "| seeds | 0, 1, 2, 3 |" in text
    assert "| tokens per run | 102,400 |" in text and "| git commit | 0123456789 |" in text
    assert "| runs | 14 compared, 0 set apart, 0 failed or diverged, 1 skipped |" in text
    assert "](results/paper_mla/val_loss_curves.png)" in text and "](results/paper_mla/pareto_kv_vs_loss.png)" in text
    for name in (*PLOTS, compare.TABLE_MD, compare.TABLE_JSON):
        assert (results / "paper_mla" / name).is_file()
    claims = text[text.index("### Claims") : text.index("## How to reproduce")].splitlines()[2:-1]
    # mla_rope - mha_rope at r=0.75d: 0.05, -0.03 (sd 0.056569, 12.706205 x 0.056569 / sqrt(2) = 0.508248); in %:
    # 2.5, -1.428571; at r=d/4: 0.30, 0.22 (the same sd); in %: 15.0, 10.476190 (sd 3.198823: half-width 28.740);
    # accuracy at both: 0, -0.02 (sd 0.014142: half-width 0.127062). Rank: 0.75d: 2.06 ± 0.1271, d/2: 2.13 ± 0.2766,
    # d/4: 2.31 ± 0.1271: each interval overlaps its neighbours'.
    assert claims == [
        "- `gqa` caches 75.0% less than `mha_rope`; its val loss (final) against the twin is +5.23% [+4.67%, +5.80%] "
        "(n=3): distinguishable, higher; its val accuracy -0.0400 [-0.0648, -0.0152] (n=3): distinguishable, lower.",
        "- `mla_rope r=0.75d` caches 59.4% less than `mha_rope`; its val loss (final) against the twin is +0.54% "
        "[-24.42%, +25.49%] (n=2): not distinguishable at 2 seeds; its val accuracy -0.0100 [-0.1371, +0.1171] "
        "(n=2): not distinguishable at 2 seeds.",
        "- `mla_rope r=d/2` caches 71.9% less than `mha_rope`; its val loss (final) against the twin is +1.42% "
        "[-0.82%, +3.65%] (n=3): not distinguishable at 3 seeds; its val accuracy +0.0000 [-0.0248, +0.0248] (n=3): "
        "not distinguishable at 3 seeds.",
        "- `mla_rope r=d/4` caches 84.4% less than `mha_rope`; its val loss (final) against the twin is +12.74% "
        "[-16.00%, +41.48%] (n=2): not distinguishable at 2 seeds; its val accuracy -0.0100 [-0.1371, +0.1171] "
        "(n=2): not distinguishable at 2 seeds.",
        "- `mla_rope`: the mean val loss falls as the rank grows (d/4: 2.3100, d/2: 2.1300, 0.75d: 2.0600); the 95% "
        "intervals overlap between d/4 and d/2, d/2 and 0.75d, so those steps are not resolved.",
    ]
    assert "make sweep EXPERIMENT=paper_mla\n" in text and "`make results` alone regenerates it" in text


def test_committed_report_is_what_make_results_writes_from_the_committed_runs(tmp_path):
    """docs/results.md is regenerated, not edited: the report of a copy of docs/results/ (its run summaries, intros
    and benchmark JSONs) equals the committed file, so a summary or intro committed without `make results` fails."""
    shutil.copytree(REPO / "docs" / "results", tmp_path / "results")
    report.main([str(tmp_path / "results"), "--out", str(tmp_path / "results.md")])
    assert (tmp_path / "results.md").read_text() == (REPO / "docs" / "results.md").read_text()


def test_report_needs_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path), "--out", str(tmp_path / "results.md")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path} holds no <experiment>/runs/*.json\n"
    assert not (tmp_path / "results.md").exists()


# ---------------------------------------------------------------------------------------- the wandb: source


class FakeRun:
    def __init__(self, run_id, state, summary, config, history):
        self.id, self.name, self.state = run_id, run_id, state
        self.summary_metrics, self.config, self._history = summary, config, history

    def scan_history(self, keys=None):
        return [row for row in self._history if all(k in row for k in keys or ())]


def fake_wandb_run(run_id, run, state="finished", full_summary=True, flat_config=False):
    """The shapes wandb.Api() returns for one of our runs: summary (summary.json's fields, which train.py adds,
    besides Lightning's last values), config (train.py's hyperparameters, the resolved config nested under "config"
    or flattened to "config/..." keys) and history rows (Lightning logs trainer/global_step with every metric)."""
    loss = run["val_loss_final"]
    history = [
        {"trainer/global_step": 0, "data/entropy_floor": 1.0},
        {"trainer/global_step": 9, "train/loss": 5.0},
        {"trainer/global_step": 10, "val/loss": loss + 1, "val/acc": 0.3},
        {"trainer/global_step": 20, "val/loss": loss, "val/acc": 0.5},
    ]
    summary = {"val/loss": loss, "val/acc": 0.5, "data/entropy_floor": 1.0, "perf/tokens_per_s": 2000.0}
    if full_summary:
        summary |= {k: v for k, v in run.items() if k not in ("config", "val_history")}
    hparams = {k: run[k] for k in ("rank", "attention", "model", "seed", "params", "params_non_embedding")}
    if flat_config:
        flat = pd.json_normalize(run["config"], sep="/").to_dict("records")[0]
        hparams |= {f"config/{key}": value for key, value in flat.items()}
    else:
        hparams["config"] = run["config"]
    return FakeRun(run_id, state, summary, hparams, history)


def test_wandb_source_reads_a_group_through_the_api(monkeypatch, tmp_path, capsys):
    import wandb

    calls = []
    resolved = {"trainer.precision": "32-true"}  # as the summary says; a Lightning-only summary does not

    class FakeApi:
        def runs(self, path, filters=None):
            calls.append((path, filters))
            return [
                fake_wandb_run("a", summary("mha_rope", 0, 2.0, changes=resolved)),
                fake_wandb_run("b", summary("mha_rope", 1, 2.2, changes=resolved), flat_config=True),
                fake_wandb_run("c", summary("mla_rope", 0, 2.31, rank=0.5, kv=288, changes=resolved)),
                fake_wandb_run(  # Lightning's keys only: no KV size
                    "d", summary("mla_rope", 1, 2.33, rank=0.5, changes=resolved), full_summary=False, flat_config=True
                ),
                fake_wandb_run("e", summary("mla_rope", 2, 9.0, rank=0.5, changes=resolved), state="running"),
                fake_wandb_run("f", summary("gqa", 0, 9.0, changes=resolved), state="crashed", full_summary=False),
            ]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.chdir(tmp_path)
    compare.main(["wandb:me/latentlm/paper_mla-2026-01-01_00-00-00"])
    assert calls == [("me/latentlm", {"group": "paper_mla-2026-01-01_00-00-00"})]
    assert "note: W&B run e (e) is running: not compared" in capsys.readouterr().err
    out = tmp_path / "logs" / "compare" / "paper_mla-2026-01-01_00-00-00"
    data = json.loads((out / "compare.json").read_text())
    (group,) = data["groups"]
    mha, mla = group["variants"]
    assert (mha["attention"], mha["rank"], mha["loss_n"], mha["loss_mean"]) == ("mha_rope", None, 2, pytest.approx(2.1))
    assert (mla["attention"], mla["rank"], mla["twin"], mla["loss_n"]) == ("mla_rope", 0.5, "mha_rope", 2)
    assert mla["runs"] == ["wandb:me/latentlm/c", "wandb:me/latentlm/d"]
    assert mla["loss_mean"] == pytest.approx(2.32) and mla["loss_change_mean"] == pytest.approx(0.22)  # 0.31, 0.13
    assert mla["kv_elements_n"] == 1 and mla["kv_change_pct"] == pytest.approx(-71.875)  # d has no KV size
    assert mla["acc_mean"] == 0.5 and mla["tokens_per_s_mean"] == 1500.0 and mla["entropy_floor_mean"] == 1.25
    (failed,) = data["failed"]
    assert (failed["run"], failed["status"]) == ("wandb:me/latentlm/f", "failed")
    assert failed["error"] == "W&B run state crashed"
    assert all((out / name).is_file() for name in PLOTS)


def test_wandb_source_without_an_answer_is_one_line(monkeypatch, capsys):
    """What wandb raised here with a key but no server to reach (after about 25 s), as a fake: one line, exit 2.
    (Without a key, the real wandb: tests/test_cli.py.)"""
    import wandb

    def no_server():
        raise wandb.errors.AuthenticationError(
            "Failed to verify credentials with https://api.wandb.ai: Failed to execute API request: the service "
            "process is busy and did not respond in time."
        )

    monkeypatch.setattr(wandb, "Api", no_server)
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["wandb:me/latentlm/g"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: wandb:me/latentlm/g: cannot read W&B (AuthenticationError: Failed to verify credentials with "
        "https://api.wandb.ai: Failed to execute API request: the service process is busy and did not respond in "
        "time.); a wandb: source needs network and an API key (WANDB_API_KEY or `wandb login`); offline runs "
        "compare from their run dirs\n"
    )


# ------------------------------------------------------------------------------------------- the experiments


def compose_experiment(name: str, tmp_path, *overrides: str):
    return compose_train([f"experiment={name}", f"paths.root_dir={tmp_path}", *overrides], hydra_config=True)


def test_paper_mla_is_the_papers_setup(tmp_path):
    cfg = compose_experiment("paper_mla", tmp_path)
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.model.n_head, cfg.data.seq_len) == (512, 8, 8, 512)
    assert (cfg.data.num_stories, cfg.data.batch_size, cfg.trainer.max_steps) == (100_000, 64, 600)
    assert dict(cfg.hydra.sweeper.params) == {
        "attention": "mha,mha_rope,mla,mla_rope,mla_rope_split",  # every latent variant beside its twin
        "rank": "0.125,0.25,0.5,1.0",
        "seed": "0,1,2",
    }
    assert cfg.judge.samples == 64
    assert cfg.task_name == "paper_mla" and cfg.hydra.sweep.subdir == "mha_r0.5_s0"
    assert cfg.logger.wandb.group == f"paper_mla-{cfg.sweep_id}"  # one W&B group for the sweep dir
    assert cfg.hydra.sweep.dir.endswith(f"/paper_mla/multiruns/{cfg.sweep_id}")
    twin = compose_experiment("paper_mla_smoke", tmp_path)
    assert twin.hydra.sweeper.params.keys() == cfg.hydra.sweeper.params.keys()


@pytest.mark.parametrize("name", ["zoo", "zoo_smoke"])
def test_zoo_sweeps_every_attention_variant(name, tmp_path):
    cfg = compose_experiment(name, tmp_path)
    assert cfg.hydra.sweeper.params.attention.split(",") == group_choices("attention")
    assert cfg.rank == 0.5 and cfg.hydra.sweeper.params.rank == "0.5"


# ---------------------------------------------------------------------------- real runs through the real CLI


def test_compare_a_real_smoke_multirun(data_root, tmp_path):
    """experiment=paper_mla_smoke as documented, one command: every latent variant beside its twin."""
    sweep = tmp_path / "sweep"
    run_train("-m", "experiment=paper_mla_smoke", "sweep_id=test", "trainer.max_steps=10", f"hydra.sweep.dir={sweep}",
              root=data_root)
    comparison = compare.compare([str(sweep)])
    assert len(comparison.headers) == 1  # one setup: only attention, rank and seed differ
    rows = comparison.variants
    # d_model 32, 2 layers: MHA caches 2 x 32 a layer; MLA the latent (8 or 16); MLA+RoPE + an 8-dim rotary key;
    # the split layout two latents + the rotary key. MHA trains once per seed although the sweep lists two ranks.
    assert list(zip(rows.attention, rows["rank"].fillna(0), rows.loss_n, rows.twin.fillna("-"), rows.kv_elements_mean,
                    strict=True)) == [
        ("mha", 0, 2, "-", 128),
        ("mha_rope", 0, 2, "mha", 128),
        ("mla", 0.5, 2, "mha", 32),
        ("mla", 0.25, 2, "mha", 16),
        ("mla_rope", 0.5, 2, "mha_rope", 48),
        ("mla_rope", 0.25, 2, "mha_rope", 32),
        ("mla_rope_split", 0.5, 2, "mha_rope", 80),
        ("mla_rope_split", 0.25, 2, "mha_rope", 48),
    ]
    assert comparison.skipped == 4  # MHA and MHA+RoPE at the second rank, two seeds each
    summaries = [json.loads((sweep / f"mla_rope_r0.5_s{s}" / "summary.json").read_text()) for s in (0, 1)]
    mla_rope = variant(comparison, "mla_rope", 0.5)
    assert mla_rope.loss_mean == pytest.approx((summaries[0]["val_loss_final"] + summaries[1]["val_loss_final"]) / 2)
    history = compare._history(comparison.runs)
    assert len(history[history.run == str(sweep / "mla_rope_r0.5_s0")]) == 2  # validation every 5 of 10 steps
    compare.write(comparison, sweep)
    for name in PLOTS:
        assert (sweep / name).read_bytes()[:4] == b"\x89PNG"


def wandb_inspect(run_file: Path, *flags: str) -> str:
    """An offline run's .wandb log read back by wandb's own reader, `wandb leet inspect --json`."""
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wandb_records(run_file: Path) -> list[dict]:
    """Every record of the log (run, config, history, summary, ...), one JSON object a line."""
    return [json.loads(line) for line in wandb_inspect(run_file).splitlines() if line.startswith("{")]


def wandb_state(run_file: Path) -> dict:
    """The run's state as W&B keeps it: config, tags, summary (the last value of every metric), exit code."""
    return json.loads(wandb_inspect(run_file, "--summary"))


@pytest.fixture(scope="module")
def wandb_sweep(data_root, tmp_path_factory) -> Path:
    """Two offline W&B runs of one sweep (mla_rope r=d/2, seeds 0 and 1)."""
    sweep = tmp_path_factory.mktemp("wandb") / "sweep"
    run_train(
        "-m",
        "experiment=paper_mla_smoke",
        "logger=default",
        "attention=mla_rope",
        "rank=0.5",
        "seed=0,1",
        "trainer.max_steps=10",
        "sweep_id=wb",
        f"hydra.sweep.dir={sweep}",
        root=data_root,
    )
    return sweep


def offline_run_file(run_dir: Path) -> Path:
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (run_file,) = offline.glob("*.wandb")
    return run_file


@pytest.mark.parametrize("seed", [0, 1])
def test_wandb_offline_run_reads_back(wandb_sweep, seed):
    run_dir = wandb_sweep / f"mla_rope_r0.5_s{seed}"
    records = wandb_records(offline_run_file(run_dir))
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_group"] == "paper_mla_smoke-wb" and run["display_name"] == f"mla_rope-r0.5-s{seed}"
    assert run["tags"] == ["attention=mla_rope", "rank=0.5", "model=tiny", f"seed={seed}"]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    logged = {int(h["trainer/global_step"]): h["val/loss"] for h in history if "val/loss" in h}
    csv_val = dict(series(read_metrics(run_dir), "val/loss"))
    assert logged and logged == pytest.approx(csv_val)  # W&B holds the same val/loss as the CSV, step for step
    state = wandb_state(offline_run_file(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert state["state"] == "finished" and state["summary"]["val/loss"] == pytest.approx(summary["val_loss_final"])
    assert state["config"]["attention"] == "mla_rope"  # train.py's hyperparameters and the resolved config
    config = compare.config_from_wandb(state["config"])
    assert (config["seed"], config["model"]["d_model"], config["trainer"]["max_steps"]) == (seed, 32, 10)


def test_wandb_summary_holds_the_run_summary(wandb_sweep):
    run_dir = wandb_sweep / "mla_rope_r0.5_s0"
    state = wandb_state(offline_run_file(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("val_loss_best", "tokens_per_s", "entropy_floor", "gap_to_floor", "params"):
        assert state["summary"][key] == pytest.approx(summary[key]), key
    kv_bytes = state["summary"]["kv_cache"]["bytes_per_token_bf16"]
    assert kv_bytes == summary["kv_cache"]["bytes_per_token_bf16"] == 2 * 48


def test_report_tables_decode_speed_against_the_twin_measured_in_the_same_call():
    bench = {
        "gpu": "H200", "device": "cuda", "date": "2026-12-01", "command": "bench_decode.py --batches 64",
        "summary": [{"variant": v, "bytes_per_token": b} for v, b in
                    (("mha_rope", 16384), ("mla_rope:absorbed", 4608), ("mla_rope@1.0:absorbed", 8704), ("gta", 2560))],
        "rows": [{"variant": "mha_rope", "batch": 64, "context": 4096, "tokens_per_s": 50000.0},
                 {"variant": "mla_rope:absorbed", "batch": 64, "context": 4096, "tokens_per_s": 85000.0},
                 {"variant": "mla_rope@1.0:absorbed", "batch": 64, "context": 4096, "tokens_per_s": 51000.0},
                 {"variant": "gta", "batch": 64, "context": 4096, "skipped": "over budget"}],
    }
    lines = report.decode_table(bench).splitlines()
    assert lines[2:] == [
        "| variant | KV bytes/token | b64 x 4,096 |",
        "|---|---|---|",
        "| mha_rope | 16,384 | 50,000 |",  # a baseline: no twin
        "| mla_rope:absorbed | 4,608 | 85,000 (1.70x) |",
        "| mla_rope@1.0:absorbed | 8,704 | 51,000 (1.02x) |",
        "| gta | 2,560 | – |",  # not measured
    ]


def report_section(results: Path, heading: str, benchmarks: dict[str, dict]) -> str:
    """The one section under `heading` of the report made with these benchmark files in paper_mla's folder."""
    for name, bench in benchmarks.items():
        (results / "paper_mla" / name).write_text(json.dumps(bench))
    out = results.parent / "results.md"
    report.main([str(results), "--out", str(out)])
    text = out.read_text()
    assert text.count(heading) == 1
    return text[text.index(heading) : text.index("### Claims")]


def test_report_gives_each_decode_benchmark_call_its_own_table(results):
    """A folder may hold several bench_decode*.json (one a call): each is tabled on its own, since a variant's ratio
    to its twin holds only within one call."""
    def call(command: str, rate: float) -> dict:
        return {"gpu": "H200", "device": "cuda", "date": "2026-12-01", "command": command,
                "summary": [{"variant": v, "bytes_per_token": b} for v, b in (("mha_rope", 16384), ("gta", 2560))],
                "rows": [{"variant": "mha_rope", "batch": 64, "context": 4096, "tokens_per_s": 50000.0},
                         {"variant": "gta", "batch": 64, "context": 4096, "tokens_per_s": rate}]}

    decode = report_section(results, "### Decode speed", {
        "bench_decode.json": call("bench_decode.py --variants mha_rope,gta", 25000.0),
        "bench_decode_kernel.json": call("bench_decode.py # gta's kernel", 100000.0)})
    assert decode.index("`bench_decode.py --variants mha_rope,gta`") < decode.index("`bench_decode.py # gta's kernel`")
    assert "| gta | 2,560 | 25,000 (0.50x) |" in decode and "| gta | 2,560 | 100,000 (2.00x) |" in decode


def test_report_gives_each_training_benchmark_call_its_own_table_with_its_note(results):
    """Several bench_train*.json (one a call) each get a table, the ratio taken within its call; a hand-written
    `note` (a row that timed code since replaced) is printed above its table."""
    def call(command: str, rate: float, **note: str) -> dict:
        rows = [{"variant": v, "tokens_per_s": t, "flops_per_token": 1.9e8, "mfu": 0.3, "device": "NVIDIA H200"}
                for v, t in (("mha_rope", 1.5e6), ("tpa", rate))]
        return {"date": "2026-12-01", "command": command, "rows": rows, **note}

    train = report_section(results, "### Training speed", {
        "bench_train.json": call("bench_train.py # einsums", 1.2e6, note="tpa: einsums"),
        "bench_train_tpa.json": call("bench_train.py # broadcast", 1.35e6)})
    assert train.index("`bench_train.py # einsums`") < train.index("tpa: einsums") < train.index("# broadcast`")
    assert "| tpa | 1,200,000 | 0.80x | 1.00x | 30.0% |" in train and "| tpa | 1,350,000 | 0.90x |" in train
    assert train.count("tpa: einsums") == 1


def test_report_tables_training_speed_against_the_twin_measured_in_the_same_call():
    def row(variant, tokens_per_s, flops, mfu=0.3):
        return {"variant": variant, "tokens_per_s": tokens_per_s, "flops_per_token": flops, "mfu": mfu,
                "device": "NVIDIA H200"}

    bench = {"date": "2026-12-01", "command": "bench_train.py --variants mha_rope,gta",
             "rows": [row("nanogpt", 1.7e6, 1.9e8), row("mha (plain loop)", 1.6e6, 1.9e8),
                      row("mha_rope", 1.5e6, 2.0e8), row("gta", 1.2e6, 1.8e8, None), row("mla", 1.0e6, 1.9e8),
                      row("mha_rope+fused_loss=true", 1.2e6, 2.0e8)]}
    bench["rows"][4]["tokens_per_s_runs"] = [1.1e6, 1.0e6, 0.9e6]  # bench_train.py --repeats 3
    lines = report.train_table(bench).splitlines()
    assert "NVIDIA H200, 2026-12-01" in lines[0]
    assert lines[2:] == [
        "| variant | tokens/s | vs twin | FLOPs/token vs twin | MFU |",
        "|---|---|---|---|---|",
        "| mha_rope | 1,500,000 | – | – | 30.0% |",  # a baseline
        "| gta | 1,200,000 | 0.80x | 0.90x | – |",
        "| mla | 1,000,000 (900,000-1,100,000, 3 runs) | – | – | 30.0% |",  # its twin (mha) not in this call
        "| mha_rope+fused_loss=true | 1,200,000 | 0.80x | 1.00x | 30.0% |",  # against mha_rope: the switch alone
    ]
