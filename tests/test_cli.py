"""End-to-end runs through the real CLI (Hydra + Lightning), as a user types them."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SHORT_RUN, gpu_step_losses, read_metrics, run_main, run_train, series

import latentlm.train as train_cli


def test_run_writes_summary_and_loss_falls(smoke_run):
    run_dir = smoke_run  # python -m latentlm.train experiment=smoke attention=mla_rope rank=0.5
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["attention"] == "mla_rope" and summary["rank"] == 0.5 and summary["model"] == "tiny"
    assert summary["steps"] == 30
    # d_model 32 at rank 0.5 caches a 16-dim latent + an 8-dim rotary key (head_dim 16 / 2) in each of 2 layers.
    assert summary["kv_cache"]["elements_per_token_per_layer"] == [24, 24]
    assert summary["kv_cache"]["bytes_per_token_bf16"] == 2 * 48
    assert summary["entropy_floor"] > 0 and summary["gap_to_floor"] == pytest.approx(
        summary["val_loss_final"] - summary["entropy_floor"]
    )
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "checkpoints" / "best.ckpt").exists()
    assert (run_dir / "config.yaml").exists() and (run_dir / ".hydra" / "config.yaml").exists()
    val = [v for _, v in series(read_metrics(run_dir), "val/loss")]
    train = [v for _, v in series(read_metrics(run_dir), "train/loss")]
    # The summary agrees with the logged validations (steps 10, 20 and 30, the last one the final) and the checkpoint.
    assert len(val) == 3 and summary["val_loss_final"] == val[-1] and summary["val_loss_best"] == min(val)
    best_ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    scores = [s["best_model_score"] for k, s in best_ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert [float(s) for s in scores] == [pytest.approx(min(val))]
    assert val[-1] < val[0] - 0.2 and train[-1] < train[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["attention=foo"], "attention=foo is not a known attention; choose one of: "),
        (["-m", "model=tiny,huge"], "model=huge is not a known model; choose one of: 124m, 30m, tiny"),
        (["rank=1.5"], "rank=1.5 is outside (0, 1]"),
        (["rank=0"], "rank=0 is outside (0, 1]"),
        (["model.n_head=3"], "model: n_head=3 does not divide d_model=32; choose n_head in {1, 2, 4, 8, 16, 32}"),
        (["attention=gqa", "attention.n_kv_heads=3"],
         "model: n_kv_heads=3 does not divide n_head=2; choose one of {1, 2}"),
        (["attention=gta", "attention.rope_dim=5"], "model: rope_dim=5 must be even and in (0, head_dim=16]"),
        (["attention=tpa", "attention.rank_q=0"], "model: rank_q=0 must be a whole number of factor terms, at least 1"),
        (["data.seq_len=64"], "data.seq_len=64 is longer than the context model.block_size=32"),
        (["data=text", "data.files=/nonexistent/*.txt"], "data.files=/nonexistent/*.txt matches no file"),
        (["data=text"], "data.files is required with data=text: give files or globs, e.g. data.files='my/*.txt'"),
        (["data=tinystories", "data.local_path=/nonexistent"], "data.local_path=/nonexistent does not exist"),
        (["data=text", "data.files=README.md", "data.split=paragraph"], "data.split=paragraph is not a text split"),
        (["data.batch_size=0"], "data.batch_size=0 must be a whole number of sequences, at least 1"),
        (["tokenizer.vocab_size=10"], "tokenizer.vocab_size=10 is too small for a byte-level BPE: the minimum is 258"),
    ],
)
def test_bad_config_fails_fast_with_one_line(overrides, expected, tmp_path, capsys):
    """In-process (the CLI's own main()), so the cases cost no interpreter start-ups."""
    flags = [a for a in overrides if a.startswith("-")]
    rest = [a for a in overrides if not a.startswith("-")]
    code, _, err = run_main(capsys, train_cli.main, *flags, "experiment=smoke", f"paths.root_dir={tmp_path}", *rest)
    lines = err.strip().splitlines()
    assert code == 2 and lines == [f"error: {lines[0].removeprefix('error: ')}"] and expected in lines[0]
    assert not (tmp_path / "data").exists()  # stopped before any work


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "data.files={path} gave 0 non-empty document(s) with data.split=separator; need at least 2"),
        (b"a", "data.files={path} gave 1 non-empty document(s) with data.split=separator; need at least 2"),
        (bytes(range(256)), "data.files: {path} is not UTF-8 text (byte 0x80: invalid start byte)"),
        (b"a<|endoftext|>b", "data.seq_len=32 needs 33 tokens a window, but the train split holds 2;"),
        (b"<|endoftext|>".join([b"Ben had a red ball and a blue kite."] * 6), "data.batch_size=8 is more than the"),
    ],
    ids=["empty", "one_char", "binary", "two_chars", "few_windows"],
)
def test_unusable_text_file_stops_with_one_line(content, expected, tmp_path, capsys):
    """Files that exist but cannot be trained on fail where they are read, still in one line."""
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    code, _, err = run_main(capsys, train_cli.main, "experiment=smoke", f"paths.root_dir={tmp_path}",
                            f"hydra.run.dir={tmp_path / 'run'}", "data=text", f"data.files={path}", "tokenizer=bytes")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith(f"error: {expected.format(path=path)}")


def test_bad_config_exit_code_from_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "latentlm.train", "rank=2", f"paths.root_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: rank=2 is outside")


def test_every_attention_variant_trains_through_the_cli(data_root, tmp_path):
    from latentlm.config import group_choices

    variants = group_choices("attention")
    sweep = tmp_path / "zoo"
    run_train(
        "-m",
        "experiment=smoke",
        f"attention={','.join(variants)}",
        "rank=0.5",
        "model.n_head=4",  # GLA-4 needs 4 head groups (the smoke model has 2 heads)
        f"hydra.sweep.dir={sweep}",
        root=data_root,
        timeout=900,
    )
    for i, name in enumerate(variants):
        summary = json.loads((sweep / str(i) / "summary.json").read_text())
        assert summary["attention"] == name and summary["steps"] == 30
        val = [v for _, v in series(read_metrics(sweep / str(i)), "val/loss")]
        assert val[-1] < val[0] - 0.2, (name, val)


def test_compiled_training_matches_eager(compiled_run, data_root, tmp_path):
    """The GPU path compiles model + loss (torch.compile also runs on CPU): same losses as eager training."""
    eager = tmp_path / "eager"
    run_train(*SHORT_RUN, "compile=false", f"hydra.run.dir={eager}", root=data_root)
    finals = {run: json.loads((run / "summary.json").read_text())["val_loss_final"] for run in (compiled_run, eager)}
    assert finals[compiled_run] == pytest.approx(finals[eager], rel=1e-4)
    assert any((data_root / ".cache" / "compile").rglob("*"))  # the compiled graphs went to paths.compile_cache_dir


@pytest.mark.gpu
def test_compiled_training_on_gpu_matches_eager_to_bf16_precision(data_root, tmp_path):
    """On a GPU, compile=auto trains in bf16-mixed through CUDA graphs (compile_mode=reduce-overhead): every step's
    loss is eager bf16 training's, to bf16's precision (a graph replaying stale buffers or inputs would not be)."""
    compiled, eager = (gpu_step_losses(data_root, tmp_path / flag, f"compile={flag}") for flag in ("auto", "false"))
    assert compiled == {step: pytest.approx(loss, rel=1e-2) for step, loss in eager.items()}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a CLI that stopped with exit 2, no traceback."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return errors[0]


def test_gpt2_tokenizer_offline_is_one_line(tmp_path):
    """An empty tiktoken cache, and a proxy that refuses every connection: the download fails here, not online."""
    proxy = "http://127.0.0.1:9"
    proc = run_train("experiment=smoke", "tokenizer=gpt2", f"hydra.run.dir={tmp_path / 'run'}", root=tmp_path,
                     check=False, env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"), "HTTPS_PROXY": proxy,
                                       "HTTP_PROXY": proxy, "NO_PROXY": ""})
    assert one_error_line(proc).startswith("error: tokenizer=gpt2 needs tiktoken's gpt2 files, which could not be "
                                           f"loaded (ProxyError); TIKTOKEN_CACHE_DIR={tmp_path / 'tiktoken'}.")
    assert not (tmp_path / "run").exists()  # bad input leaves no run folder


def test_tinystories_offline_is_one_line(tmp_path):
    proc = run_train("experiment=smoke", "data=tinystories", f"hydra.run.dir={tmp_path / 'run'}", root=tmp_path,
                     check=False, env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert one_error_line(proc).startswith(
        "error: data=tinystories could not load data.path=roneneldan/TinyStories from the Hugging Face Hub or its cache"
    )
    assert not (tmp_path / "run").exists()


def test_compare_wandb_without_an_api_key_is_one_line(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    environment |= {"HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path), "NETRC": str(tmp_path / "netrc")}
    proc = subprocess.run([sys.executable, "-m", "latentlm.compare", "wandb:e/p/g"], cwd=REPO, capture_output=True,
                          text=True, env=environment, timeout=120)
    assert one_error_line(proc) == (
        "error: wandb:e/p/g: cannot read W&B (UsageError: No API key configured. Use `wandb login` to log in.); a "
        "wandb: source needs network and an API key (WANDB_API_KEY or `wandb login`); offline runs compare from "
        "their run dirs"
    )


def test_help_imports_no_torch():
    """`--help` answers from the configs alone: torch and Lightning, seconds to import, stay out."""
    script = ("import sys\nfrom latentlm.train import main\nsys.argv = ['train', '--help']\ntry:\n    main()\n"
              "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "== Configuration groups ==" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_run_prints_no_library_noise(data_root, tmp_path):
    proc = run_train("experiment=smoke", "logger=default", "trainer.max_steps=10", f"hydra.run.dir={tmp_path / 'run'}",
                     root=data_root, env={"WANDB_SILENT": "false"})
    output = proc.stdout + proc.stderr
    for noise in ("litlogger", "LeafSpec", "anonymous setting"):
        assert noise not in output
    assert output.count("GPU available:") == 1  # Lightning's lines once, not also through its own handler
    assert "wandb sync" in output  # W&B's own lines, which say where the offline run is, stay


def test_profiler_shows_top_cpu_ops_and_warns_of_a_window_outside_the_run(data_root, tmp_path):
    profile = "+callbacks.profile._target_=latentlm.callbacks.ProfileSteps"
    late = "+callbacks.late._target_=latentlm.callbacks.ProfileSteps"  # the default window, steps 30-35
    proc = run_train("experiment=smoke", "trainer.max_steps=10", profile, "+callbacks.profile.start=4",
                     "+callbacks.profile.steps=2", late, f"hydra.run.dir={tmp_path / 'run'}", root=data_root)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert sum("profile: steps 30-35 lie outside this run (steps 0-10): nothing will be profiled" in line
               for line in lines) == 1
    (start,) = [i for i, line in enumerate(lines) if "ms wall per step; top ops by self CPU time:" in line]
    row = re.compile(r" - +([\d.]+) ms/step +[\d.]+ calls/step  (\S+)")
    rows = [row.search(line) for line in lines[start + 1 : start + 16]]
    assert all(rows), lines[start : start + 16]
    times = [float(r.group(1)) for r in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert {"aten::mm", "aten::addmm", "aten::bmm"} & {r.group(2) for r in rows}  # the matmuls are among them
    assert not [line for line in lines if line.startswith("USDT:")]  # kineto's profiler_start/stop marks
