"""The compare tool (latentlm.compare), the sweep experiments and what W&B keeps of an offline run."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, read_metrics, run_train, series
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from matplotlib.image import imread
from omegaconf import OmegaConf

from latentlm import compare
from latentlm.config import CONFIG_DIR, group_choices, register_resolvers

register_resolvers()
PLOTS = (compare.CURVES_PNG, compare.PARETO_PNG)


def exact(value):
    """Equal up to float rounding (the aggregates are computed in another order than the expected value)."""
    return pytest.approx(value, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------------- synthetic run dirs


def write_run(
    run_dir: Path,
    attention: str,
    rank: float,
    seed: int,
    best: float,
    acc: float,
    kv: int,
    curve: list[tuple[int, float]],
    floor: float = 1.0,
    tokens_per_s: float = 1000.0,
    params: int = 1_000_000,
    config: bool = True,
) -> None:
    """A finished run as train.py leaves it: summary.json, csv/metrics.csv and (optionally) config.yaml."""
    (run_dir / "csv").mkdir(parents=True)
    final = curve[-1][1]
    summary = {
        "attention": attention,
        "rank": rank,
        "model": "30m",
        "seed": seed,
        "params": params,
        "kv_cache": {"elements_per_token": kv, "bytes_per_token_bf16": 2 * kv},
        "val_loss_best": best,
        "val_loss_final": final,
        "val_acc_final": acc,
        "tokens_per_s": tokens_per_s,
        "entropy_floor": floor,
        "gap_to_floor": final - floor,
        "tokens": 1000,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rows = ["epoch,lr-AdamW/pg1,step,train/loss,val/acc,val/loss"]
    for step, loss in curve:
        rows += [f"0,0.001,{step - 1},{loss + 0.5},,", f"0,,{step},,{acc},{loss}"]
    rows.append(f"1,,{curve[-1][0]},,{acc},{final}")  # the final validation repeats the last step
    (run_dir / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    if config:
        kind = "latent" if attention.startswith("ml") else "gqa"
        OmegaConf.save(
            {"seed": seed, "rank": rank, "attention": {"name": attention, "type": kind}}, run_dir / "config.yaml"
        )


@pytest.fixture
def synthetic_sweep(tmp_path) -> Path:
    """MHA x 3 seeds (one repeated at a second rank, as a cartesian sweep makes it), MLA+RoPE r=d/2 x 2, r=d/4 x 1."""
    sweep = tmp_path / "sweep"
    for seed, best, acc in ((0, 2.0, 0.5), (1, 2.2, 0.6), (2, 2.4, 0.7)):
        curve = [(10, 4.0 + seed), (20, best)]
        write_run(sweep / f"mha_r0.5_s{seed}", "mha", 0.5, seed, best, acc, 8192, curve, config=seed != 2)
    repeat = sweep / "second_sweep" / "mha_r0.25_s0"  # found after mha_r0.5_s0, so the one dropped
    write_run(repeat, "mha", 0.25, 0, 9.9, 0.1, 8192, [(10, 9.9), (20, 9.9)])
    for seed, best in ((0, 2.31), (1, 2.33)):
        write_run(sweep / f"mla_rope_r0.5_s{seed}", "mla_rope", 0.5, seed, best, 0.55, 2304, [(10, 5.0), (20, best)])
    write_run(sweep / "nested" / "mla_rope_r0.25_s0", "mla_rope", 0.25, 0, 2.5, 0.4, 1280, [(10, 6.0), (20, 2.5)])
    return sweep


def test_aggregates_seeds_and_compares_with_mha(synthetic_sweep, tmp_path):
    out = tmp_path / "out"
    rows, written_to = compare.compare([str(synthetic_sweep)], out)
    assert written_to == out
    mha, half, quarter = rows
    assert (mha.attention, mha.rank, half.attention, half.rank, quarter.rank) == ("mha", None, "mla_rope", 0.5, 0.25)
    # MHA: 3 seeds (the repeat at rank 0.25 is dropped: rank is n/a for MHA), sample std (n - 1)
    assert [r.seed for r in mha.runs] == [0, 1, 2]
    assert mha.stats["val_loss"] == {"mean": exact(2.2), "std": exact(0.2), "n": 3}
    assert mha.stats["val_acc"] == {"mean": exact(0.6), "std": exact(0.1), "n": 3}
    assert mha.stats["gap_to_floor"]["mean"] == exact(1.2)
    assert mha.is_baseline and mha.kv_reduction_pct == 0 and mha.val_loss_change_pct == 0
    assert half.stats["val_loss"] == {"mean": exact(2.32), "std": exact(math.sqrt(2e-4)), "n": 2}
    assert half.kv_reduction_pct == exact(100 * (1 - 2304 / 8192)) == exact(71.875)
    assert half.val_loss_change_pct == exact(100 * (2.32 / 2.2 - 1))
    assert quarter.stats["val_loss"] == {"mean": exact(2.5), "std": None, "n": 1}
    assert quarter.kv_reduction_pct == exact(84.375)
    assert half.stats["kv_bytes_per_token"]["mean"] == 4608

    table = (out / "compare.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith(
        "| variant | rank | params | KV elements/token | KV reduction vs MHA | val loss (best) |"
    )
    assert lines[2] == (
        "| mha | n/a | 1.00M | 8,192 | 0.0% | 2.2000 ± 0.2000 | baseline | 0.6000 ± 0.1000 | 1.00k "
        "| 1.2000 ± 0.2000 | 3 |"
    )
    assert lines[3].startswith("| mla_rope | 0.5 (d/2) | 1.00M | 2,304 | 71.9% | 2.3200 ± 0.0141 | +5.45% |")
    assert lines[4].startswith("| mla_rope | 0.25 (d/4) | 1.00M | 1,280 | 84.4% | 2.5000 | +13.64% |")
    data = json.loads((out / "compare.json").read_text())
    assert data["metric"] == "val_loss_best" and [r["n"] for r in data["rows"]] == [3, 2, 1]
    assert data["rows"][1]["val_loss_change_vs_baseline_pct"] == exact(100 * (2.32 / 2.2 - 1))
    for name in PLOTS:
        image = imread(out / name)
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 400 and image.shape[1] > 600


def test_final_metric_and_curves(synthetic_sweep, tmp_path):
    rows, _ = compare.compare([str(synthetic_sweep)], tmp_path / "out", metric="final", plots=False)
    assert rows[0].stats["val_loss"]["mean"] == pytest.approx(2.2)  # the curves end at the best value here
    assert rows[0].runs[0].curve == [(10, 4.0), (20, 2.0)]  # val/loss rows only, the repeated last step once
    steps, means, stds = compare._mean_curve(rows[0])
    assert steps == [10, 20] and means == pytest.approx([5.0, 2.2]) and stds == pytest.approx([1.0, 0.2])
    assert not (tmp_path / "out" / compare.CURVES_PNG).exists()


def test_pareto_front():
    #            MHA        MLA r=d/2    dominated    MLA r=d/4
    points = [(16.0, 2.0), (4.5, 2.05), (4.5, 2.3), (2.5, 2.2)]
    assert compare.pareto_front(points) == [3, 1, 0]


def test_cli_prints_the_table_and_writes_next_to_the_first_input(synthetic_sweep):
    proc = subprocess.run(
        [sys.executable, "-m", "latentlm.compare", str(synthetic_sweep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[2].startswith("| mha | n/a |")
    assert "mha_r0.25_s0 repeats mha seed 0 (rank n/a for mha)" in proc.stderr
    for name in (*PLOTS, compare.TABLE_MD, compare.TABLE_JSON):
        assert (synthetic_sweep / name).is_file()


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} holds no run (no summary.json below it)"


# ---------------------------------------------------------------------------------------- the wandb: source


class FakeRun:
    def __init__(self, run_id, state, summary, config, history):
        self.id, self.name, self.state = run_id, run_id, state
        self.summary_metrics, self.config, self._history = summary, config, history

    def scan_history(self, keys=None):
        return [row for row in self._history if all(k in row for k in keys or ())]


def fake_wandb_run(run_id, attention, seed, best, kv, state="finished", full_summary=True, flat_config=False):
    """The shapes wandb.Api() returns for one of our runs: summary (with summary.json's keys once train.py puts
    them there), config (train.py's hyperparameters, the resolved config nested under "config" or flattened to
    "config/..." keys) and history rows (Lightning logs trainer/global_step with every metric)."""
    history = [
        {"trainer/global_step": 0, "data/entropy_floor": 1.0},
        {"trainer/global_step": 9, "train/loss": 5.0},
        {"trainer/global_step": 10, "val/loss": best + 1, "val/acc": 0.3},
        {"trainer/global_step": 20, "val/loss": best, "val/acc": 0.5},
    ]
    summary = {"val/loss": best, "val/acc": 0.5, "data/entropy_floor": 1.0, "perf/tokens_per_s": 2000.0}
    if full_summary:
        summary |= {
            "attention": attention,
            "rank": 0.5,
            "model": "30m",
            "seed": seed,
            "params": 2_000_000,
            "kv_cache": {"elements_per_token": kv, "bytes_per_token_bf16": 2 * kv},
            "val_loss_best": best,
            "val_loss_final": best,
            "val_acc_final": 0.5,
            "tokens_per_s": 2000.0,
            "entropy_floor": 1.0,
        }
    kind = "latent" if attention.startswith("ml") else "gqa"
    config = {
        "attention": attention,
        "rank": 0.5,
        "model": "30m",
        "params": 2_000_000,
        "config": {"seed": seed, "attention": {"name": attention, "type": kind}},
    }
    if flat_config:
        config = {k: v for k, v in config.items() if k != "config"}
        config |= {"config/seed": seed, "config/attention/name": attention, "config/attention/type": kind}
    return FakeRun(run_id, state, summary, config, history)


def test_wandb_source_reads_a_group_through_the_api(monkeypatch, tmp_path):
    import wandb

    calls = []

    class FakeApi:
        def runs(self, path, filters=None):
            calls.append((path, filters))
            return [
                fake_wandb_run("a", "mha", 0, 2.0, 8192),
                fake_wandb_run("b", "mha", 1, 2.2, 8192, flat_config=True),
                fake_wandb_run("c", "mla_rope", 0, 2.31, 2304),
                fake_wandb_run(
                    "d", "mla_rope", 1, 2.33, 2304, full_summary=False, flat_config=True
                ),  # Lightning's keys only
                fake_wandb_run("e", "mla_rope", 2, 9.0, 2304, state="running"),  # skipped
            ]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.chdir(tmp_path)
    compare.main(["wandb:me/latentlm/paper_mla-2026-01-01_00-00-00"])
    assert calls == [("me/latentlm", {"group": "paper_mla-2026-01-01_00-00-00"})]
    out = tmp_path / "logs" / "compare" / "paper_mla-2026-01-01_00-00-00"
    data = json.loads((out / "compare.json").read_text())
    mha, mla_rope = data["rows"]
    assert (mha["attention"], mha["rank"], mha["n"], mla_rope["rank"], mla_rope["n"]) == ("mha", None, 2, 0.5, 2)
    assert mha["val_loss"]["mean"] == pytest.approx(2.1) and mla_rope["val_loss"]["mean"] == pytest.approx(2.32)
    assert mla_rope["runs"] == ["wandb:me/latentlm/c", "wandb:me/latentlm/d"]
    assert mla_rope["kv_reduction_vs_baseline_pct"] == pytest.approx(71.875)
    assert mla_rope["kv_elements_per_token"]["n"] == 1  # run d has no KV size in its summary
    assert mla_rope["val_loss_change_vs_baseline_pct"] == pytest.approx(100 * (2.32 / 2.1 - 1))
    assert mla_rope["val_acc"]["mean"] == 0.5 and mla_rope["tokens_per_s"]["mean"] == 2000.0
    assert all((out / name).is_file() for name in PLOTS)


@pytest.mark.parametrize("flat_config", [False, True])
def test_wandb_fallbacks_from_lightning_metrics(flat_config):
    fake = fake_wandb_run("d", "mla_rope", 1, 2.33, 2304, full_summary=False, flat_config=flat_config)
    curve = [
        (row["trainer/global_step"], row["val/loss"]) for row in fake.scan_history(["trainer/global_step", "val/loss"])
    ]
    run = compare.make_run(fake.summary_metrics, fake.config, curve, "wandb:x/y/d")
    assert (run.attention, run.rank, run.model, run.seed) == ("mla_rope", 0.5, "30m", 1)
    assert run.curve == [(10, 3.33), (20, 2.33)]
    assert run.values["val_loss_best"] == 2.33 and run.values["val_loss_final"] == 2.33
    assert run.values["entropy_floor"] == 1.0 and run.values["gap_to_floor"] == pytest.approx(1.33)
    assert run.values["kv_elements_per_token"] is None and run.values["params"] == 2_000_000


def test_wandb_source_needs_entity_project_group(capsys):
    with pytest.raises(SystemExit):
        compare.main(["wandb:me/latentlm"])
    assert "wandb:me/latentlm is not wandb:entity/project/group" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- the experiments


def compose_experiment(name: str, tmp_path, *overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"experiment={name}", f"paths.root_dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_paper_mla_is_the_papers_setup(tmp_path):
    cfg = compose_experiment("paper_mla", tmp_path)
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.model.n_head, cfg.data.seq_len) == (512, 8, 8, 512)
    assert (cfg.data.num_stories, cfg.data.batch_size, cfg.trainer.max_steps) == (100_000, 64, 600)
    assert dict(cfg.hydra.sweeper.params) == {"attention": "mla,mla_rope", "rank": "0.25,0.5", "seed": "0,1,2"}
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
    """experiment=paper_mla_smoke as documented: the MHA sweep and the latent sweep share one sweep_id."""
    sweep = tmp_path / "sweep"
    common = ("-m", "experiment=paper_mla_smoke", "sweep_id=test", f"hydra.sweep.dir={sweep}")
    run_train(*common, "attention=mha", "rank=0.5", root=data_root)
    run_train(*common, root=data_root)
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == sorted(
        [f"mha_r0.5_s{s}" for s in (0, 1)]
        + [f"{a}_r{r}_s{s}" for a in ("mla", "mla_rope") for r in (0.25, 0.5) for s in (0, 1)]
    )
    rows, _ = compare.compare([str(sweep)])
    assert [(r.attention, r.rank, len(r.runs)) for r in rows] == [
        ("mha", None, 2),
        ("mla", 0.5, 2),
        ("mla", 0.25, 2),
        ("mla_rope", 0.5, 2),
        ("mla_rope", 0.25, 2),
    ]
    by_name = {(r.attention, r.rank): r for r in rows}
    # d_model 32, 2 layers: MHA caches 2 x 32, MLA the latent (8 or 16), MLA+RoPE the latent + an 8-dim rotary key
    kv = {key: row.mean("kv_elements_per_token") for key, row in by_name.items()}
    assert kv == {
        ("mha", None): 128,
        ("mla", 0.5): 32,
        ("mla", 0.25): 16,
        ("mla_rope", 0.5): 48,
        ("mla_rope", 0.25): 32,
    }
    assert by_name["mla_rope", 0.5].kv_reduction_pct == pytest.approx(62.5)
    summaries = [json.loads((sweep / f"mla_rope_r0.5_s{s}" / "summary.json").read_text()) for s in (0, 1)]
    row = by_name["mla_rope", 0.5]
    assert row.mean("val_loss") == pytest.approx((summaries[0]["val_loss_best"] + summaries[1]["val_loss_best"]) / 2)
    mha_loss = by_name["mha", None].mean("val_loss")
    assert row.val_loss_change_pct == pytest.approx(100 * (row.mean("val_loss") / mha_loss - 1))
    assert len(row.runs[0].curve) == 4  # validation every 5 of 20 steps
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
    config = state["config"]  # train.py's hyperparameters, the resolved config nested or flattened under config/
    assert config["attention"] == "mla_rope" and compare._lookup(config, "config.seed") == seed
    assert (
        compare._lookup(config, "config.model.d_model") == 32
        and compare._lookup(config, "config.trainer.max_steps") == 10
    )


def test_wandb_summary_holds_the_run_summary(wandb_sweep):
    run_dir = wandb_sweep / "mla_rope_r0.5_s0"
    state = wandb_state(offline_run_file(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("val_loss_best", "tokens_per_s", "entropy_floor", "gap_to_floor", "params"):
        assert state["summary"][key] == pytest.approx(summary[key]), key
    kv_bytes = compare._lookup(state["summary"], "kv_cache.bytes_per_token_bf16")
    assert kv_bytes == summary["kv_cache"]["bytes_per_token_bf16"] == 2 * 48
