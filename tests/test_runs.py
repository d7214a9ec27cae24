"""Runs you can trust: every job leaves a summary with its status, W&B runs stay one per job, sweeps skip repeats."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, read_metrics, run_train, series
from hydra.core.global_hydra import GlobalHydra

import latentlm.train as train_cli
from latentlm.timings import PHASES


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def wandb_state(run_dir) -> dict:
    """The offline W&B run's state as wandb's own reader gives it (`wandb leet inspect --summary`)."""
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", "--summary", str(run_file)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_failed_job_is_recorded_and_the_next_job_gets_its_own_wandb_run(data_root, tmp_path):
    """Job 0 raises inside fit (EarlyStopping on a metric nobody logs); Hydra goes on to job 1."""
    sweep = tmp_path / "sweep"
    proc = run_train(
        "-m", "experiment=smoke", "logger=default", "trainer.max_steps=10", "trainer.val_check_interval=5",
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.stop.monitor=nonexistent,val/loss", f"hydra.sweep.dir={sweep}",
        root=data_root, check=False,
    )
    assert proc.returncode != 0  # the sweep reports the failure at its end
    failed, ok = summary(sweep / "0"), summary(sweep / "1")
    assert failed["status"] == "failed" and "`nonexistent`" in failed["error"] and "\n" not in failed["error"]
    assert ok["status"] == "ok" and ok["steps"] == 10
    failed_run, ok_run = wandb_state(sweep / "0"), wandb_state(sweep / "1")
    assert (failed_run["state"], failed_run["exit_code"]) == ("failed", 1)
    assert (ok_run["state"], ok_run["exit_code"]) == ("finished", 0)
    assert failed_run["run_id"] != ok_run["run_id"]
    assert ok_run["summary"]["status"] == "ok" and ok_run["summary"]["val_loss_final"] == ok["val_loss_final"]


def test_divergence_stops_the_run_with_its_status(data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train("experiment=smoke", "optimizer.lr=1e6", f"hydra.run.dir={run_dir}", root=data_root, check=False)
    result = summary(run_dir)
    assert proc.returncode == 1 and result["status"] == "diverged"
    assert result["steps"] < 30 and f"not finite at step {result['steps']}" in result["error"]
    assert sum("diverged: " in line for line in (proc.stdout + proc.stderr).splitlines()) == 1
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):  # whatever was kept predates the divergence
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), ckpt.name


def test_a_sweep_over_rank_trains_a_variant_without_rank_once(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    run_train(
        "-m", "experiment=paper_mla_smoke", "attention=mha,mla", "rank=0.25,0.5", "seed=0", "trainer.max_steps=5",
        f"hydra.sweep.dir={sweep}", root=data_root,
    )
    runs = {d.name: summary(d) for d in sweep.iterdir() if (d / "summary.json").exists()}
    assert {name: r["status"] for name, r in runs.items()} == {
        "mha_r0.25_s0": "ok", "mha_r0.5_s0": "skipped", "mla_r0.25_s0": "ok", "mla_r0.5_s0": "ok"
    }
    assert runs["mha_r0.5_s0"]["duplicate_of"] == str(sweep / "mha_r0.25_s0")
    assert runs["mha_r0.25_s0"]["rank"] is None and runs["mla_r0.25_s0"]["rank"] == 0.25
    assert runs["mla_r0.25_s0"]["config"]["model"]["d_model"] == 32  # the whole resolved config travels along
    # the process's start-up (imports, Hydra) is paid by its first job only
    assert runs["mha_r0.25_s0"]["timings"]["startup"] > 0 and runs["mla_r0.25_s0"]["timings"]["startup"] == 0


def test_summary_times_each_phase_of_the_run(smoke_run):
    """Every phase of latentlm.timings is timed; the phases of fit add up to no more than the run's total."""
    timings = summary(smoke_run)["timings"]
    assert set(timings) == {*PHASES, "total"}
    assert all(timings[p] > 0 for p in ("startup", "setup", "first_step", "steps", "validation", "checkpoints"))
    assert sum(timings[p] for p in PHASES) <= timings["total"] + 1e-6


def test_summary_history_and_one_final_validation(smoke_run):
    """Validations at steps 10, 20, 30 of 30: the last one is the final one, not repeated after fit."""
    result = summary(smoke_run)
    val = series(read_metrics(smoke_run), "val/loss")
    assert len(val) == 3  # the CSV logs validations at global_step - 1
    assert [h["step"] for h in result["val_history"]] == [10, 20, 30]
    assert [h["val_loss"] for h in result["val_history"]] == [v for _, v in val]
    best = min(result["val_history"], key=lambda h: h["val_loss"])
    assert (result["val_loss_best"], result["val_acc_best"]) == (best["val_loss"], best["val_acc"])
    assert result["val_ppl_final"] == math.exp(result["val_loss_final"])
    assert result["status"] == "ok" and result["twin"] == "mha_rope"


def test_missing_checkpoint_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "latentlm.train", "experiment=smoke", f"ckpt_path={tmp_path}/nope.ckpt",
         f"paths.root_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: ckpt_path={tmp_path}/nope.ckpt is not a file; give a checkpoint such as <run>/checkpoints/last.ckpt"
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.max_step=5"], "trainer.max_step is not a config key: did you mean trainer.max_steps?"),
        (["model.d_modl=64"], "model.d_modl is not a config key: did you mean model.d_model?"),
        (["seed=x"], "seed=x is not an integer"),
        (["optimizer.lr=fast"], "optimizer.lr=fast is not a number"),
        (["judge.samples=many"], "judge.samples=many is not an integer"),
        (["async_checkpoints=maybe"], "async_checkpoints=maybe is not true or false"),
        (["fused_loss=1"], "fused_loss=1 is not true or false"),
        (["attention=mla_rope", "attention.kv_latent=both"], "model: kv_latent='both' must be 'joint' or 'split'"),
        (["model.block=gpt3"], "model: model.block='gpt3' is unknown; choose one of: gpt2, llama"),
        # (on the CPU-only CI machine; on a GPU machine the counts differ)
        (["trainer.accelerator=gpu"], "trainer.accelerator=gpu asks for a CUDA GPU; this machine has none"),
        (["trainer=fsdp"], "trainer.strategy=fsdp shards the model over CUDA GPUs; this machine has none"),
        (["trainer=ddp", "trainer.devices=-1"], "trainer.devices=-1 asks for every GPU, and this run has none"),
    ],
)
def test_bad_key_or_value_is_one_line_and_leaves_no_run_dir(overrides, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train", "experiment=smoke", f"paths.root_dir={tmp_path}", *overrides])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # a bad model option is found after the data build, which logs its progress
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {expected}") and "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.yaml"))


def test_resume_refuses_a_longer_budget(smoke_run, data_root, tmp_path):
    proc = run_train(
        "experiment=smoke", "attention=mla_rope", "trainer.max_steps=40",
        f"ckpt_path={smoke_run}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path / 'longer'}",
        root=data_root, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: trainer.max_steps=40 differs from the resumed run's 30; resuming continues its schedule, "
        "so keep trainer.max_steps=30 (train longer in a new run)"
    )


def test_resume_after_a_crash_is_exact(data_root, tmp_path):
    """Crash after step 15, resume from step 10's checkpoint: the run ends with the uninterrupted run's weights.

    The data order, the learning-rate schedule and the optimizer state must all come back for the weights to match.
    """
    common = ("experiment=smoke", "trainer.max_steps=20", "trainer.val_check_interval=10")
    every_10 = ["+callbacks.every_10._target_=lightning.pytorch.callbacks.ModelCheckpoint",
                "+callbacks.every_10.every_n_train_steps=10", "+callbacks.every_10.save_top_k=-1",
                "+callbacks.every_10.filename='step{step}'", "+callbacks.every_10.auto_insert_metric_name=false"]
    whole, crashed, resumed = tmp_path / "whole", tmp_path / "crashed", tmp_path / "resumed"
    run_train(*common, f"hydra.run.dir={whole}", root=data_root)
    proc = run_train(*common, *every_10, f"+callbacks.every_10.dirpath={crashed}/steps",
                     "+callbacks.crash._target_=tests.crash.CrashAt", "+callbacks.crash.step=15",
                     f"hydra.run.dir={crashed}", root=data_root, check=False)
    assert proc.returncode != 0 and not (crashed / "steps" / "step20.ckpt").exists()
    run_train(*common, f"ckpt_path={crashed}/steps/step10.ckpt", f"hydra.run.dir={resumed}", root=data_root)
    final = {name: torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
             for name, d in (("whole", whole), ("resumed", resumed))}
    for key, value in final["whole"].items():
        assert torch.equal(value, final["resumed"][key]), key
    assert summary(resumed)["val_loss_final"] == summary(whole)["val_loss_final"]


def test_a_run_resumed_from_its_own_checkpoint_goes_on_in_its_folder(smoke_run, data_root, tmp_path):
    """The fixture's run again, crashed at step 15 and resumed from <run>/checkpoints/last.ckpt (step 10) with no
    run dir given: it goes on in its own folder, whose metrics.csv then holds what the uninterrupted run logged."""
    run_dir, runs = tmp_path / "run", data_root / "logs" / "train" / "runs"
    common = ("experiment=smoke", "attention=mla_rope", "rank=0.5")
    proc = run_train(*common, "+callbacks.crash._target_=tests.crash.CrashAt", "+callbacks.crash.step=15",
                     f"hydra.run.dir={run_dir}", root=data_root, check=False)
    assert proc.returncode != 0 and not (run_dir / "summary.json").exists()
    before = set(runs.iterdir()) if runs.exists() else set()
    proc = run_train(*common, f"ckpt_path={run_dir}/checkpoints/last.ckpt", root=data_root)
    assert (set(runs.iterdir()) if runs.exists() else set()) == before  # no new run folder
    output = proc.stdout + proc.stderr
    assert f"resuming at step 10 in the checkpoint's own run folder {run_dir}:" in output
    assert "won't be reloaded" not in output  # Lightning's ModelCheckpoint found its own folder again
    assert summary(run_dir)["status"] == "ok" and summary(run_dir)["steps"] == 30
    whole, resumed = read_metrics(smoke_run), read_metrics(run_dir)
    for key in ("train/loss", "val/loss", "lr-AdamW/pg1", "data/entropy_floor"):
        assert series(resumed, key) == series(whole, key), key
    # A refused resume stops with its one line and leaves the finished run's summary as it was.
    before = summary(run_dir)
    proc = run_train(*common, "trainer.max_steps=40", f"ckpt_path={run_dir}/checkpoints/last.ckpt", root=data_root,
                     check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: trainer.max_steps=40")
    assert summary(run_dir) == before


def test_async_checkpoints_are_whole_when_the_run_ends(data_root, tmp_path):
    """async_checkpoints (the default): a background thread writes them; by the summary every one is complete."""
    run_dir = tmp_path / "run"
    run_train("experiment=smoke", "trainer.max_steps=10", "trainer.val_check_interval=5",
              f"hydra.run.dir={run_dir}", root=data_root)
    assert summary(run_dir)["status"] == "ok"
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        assert "state_dict" in ckpt and "optimizer_states" in ckpt
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 10


def test_validation_is_eager_unless_compile_validation():
    from hydra.utils import instantiate

    from latentlm.config import compose_train

    cfg = compose_train(["experiment=smoke"])
    compiled = instantiate(cfg.module, vocab_size=384, compile_mode="default", compile_validation=True,
                           _convert_="all")
    eager_val = instantiate(cfg.module, vocab_size=384, compile_mode="default", _convert_="all")  # the default
    plain = type(compiled._train_loss)  # what torch.compile returns for a bound method
    assert type(compiled._val_metrics) is plain and type(eager_val._train_loss) is plain
    assert eager_val._val_metrics.__func__ is type(eager_val)._val_metrics  # the method itself, not compiled


def test_training_steps_read_no_tensor_between_logging_steps(data_root, tmp_path):
    """No read of a tensor into Python (a host-GPU sync on a GPU) in a step that logs nothing: the loss is read for
    the logs every trainer.log_every_n_steps (5 here) and at validations (every 10), never in the steps between.
    Lightning turns the progress bar's metrics into numbers every step: the loss goes to the bar only when there is
    one (a terminal), so these runs, and every sweep and benchmark, step without waiting for the GPU."""
    reads = tmp_path / "reads.json"
    run_train("experiment=smoke", "trainer.max_steps=20", "+callbacks.host_reads._target_=tests.host_reads.HostReads",
              f"+callbacks.host_reads.out={reads}", f"hydra.run.dir={tmp_path / 'run'}", root=data_root)
    per_step = {int(step): n for step, n in json.loads(reads.read_text()).items()}
    assert {step for step, n in per_step.items() if n} <= {0, 5, 10, 15, 20}, per_step  # 0: the sanity validation
    assert per_step.get(10, 0) > 0  # the counter sees the reads that logging makes
