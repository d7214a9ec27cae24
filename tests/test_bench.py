"""The benchmark scripts as a user runs them without a GPU: results go to a folder under logs/, never into docs/."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def docs_state() -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (REPO / "docs").rglob("*") if p.is_file()}


def script_env(cuda: bool = False, **extra: str) -> dict[str, str]:
    """The environment a script runs in: the checkout first on the import path (ahead of whatever PYTHONPATH already
    holds, e.g. the GPU node's wheelhouse), CUDA hidden unless `cuda`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **({} if cuda else {"CUDA_VISIBLE_DEVICES": ""}), **extra}


def run_script(name: str, *args: str, cwd: Path, cuda: bool = False) -> subprocess.CompletedProcess:
    """Run scripts/<name> from `cwd` (on the CPU unless `cuda`); docs/ must stay as it was."""
    before = docs_state()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        cwd=cwd, capture_output=True, text=True, timeout=600, env=script_env(cuda),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert docs_state() == before
    return proc


def only_run(cwd: Path, name: str) -> Path:
    """The one folder logs/bench/<name>/<time>/ a default run made under cwd."""
    (run,) = (cwd / "logs" / "bench" / name).iterdir()
    return run


def test_bench_data_creates_the_out_folder(tmp_path):
    out = run_script("bench_data.py", "--num-stories", "300", "--val-stories", "40", "--vocab-size", "300",
                     "--train-documents", "300", "--num-proc", "1", "--no-floors", "--out", "new/folder",
                     cwd=tmp_path).stdout
    result = json.loads((tmp_path / "new" / "folder" / "bench_data.json").read_text())
    assert result["stories"] == 340 and out.strip().endswith("wrote new/folder/bench_data.json")


# A stand-in for a karpathy/nanoGPT checkout, written for this test: nanoGPT's interface (GPTConfig, GPT(config),
# forward(idx, targets) -> (logits, loss), configure_optimizers) around a toy model, logging what it is given.
STAND_IN_MODEL = """
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

import torch
import torch.nn.functional as F
from torch import nn

CALLS = Path(__file__).with_name("calls.jsonl")


def record(**call):
    with CALLS.open("a") as f:
        f.write(json.dumps(call) + "\\n")


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 256
    n_layer: int = 1
    n_head: int = 1
    n_embd: int = 32
    dropout: float = 0.1
    bias: bool = True


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.positions = nn.Embedding(config.block_size, config.n_embd)
        self.layers = nn.ModuleList(nn.Linear(config.n_embd, config.n_embd, config.bias) for _ in range(config.n_layer))
        self.out = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        record(call="GPT", config=asdict(config))

    def forward(self, idx, targets=None):
        h = self.tokens(idx) + self.positions(torch.arange(idx.size(1), device=idx.device))
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        logits = self.out(h)
        if not idx.is_meta:  # the FLOP count runs on the meta device
            record(call="forward", shape=list(idx.shape))
        return logits, None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        record(call="configure_optimizers", device_type=device_type)
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
"""


def stand_in_nanogpt(path: Path) -> str:
    """Write the stand-in checkout at `path`, commit it, and return the commit."""
    path.mkdir()
    (path / "model.py").write_text(STAND_IN_MODEL)
    git = ["git", "-C", str(path), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for args in (["init", "-q"], ["add", "model.py"], ["commit", "-q", "-m", "stand-in"]):
        subprocess.run([*git, *args], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def test_bench_train_on_a_cpu_runs_its_cpu_twin_and_the_references_into_logs(tmp_path):
    commit = stand_in_nanogpt(tmp_path / "nanoGPT")
    out = run_script("bench_train.py", "--variants", "mha", "--nanogpt", "nanoGPT", "--plain-loop", "mha",
                     "trainer.max_steps=15", "callbacks.throughput.warmup_steps=5", "callbacks.throughput.window=5",
                     cwd=tmp_path).stdout
    assert out.startswith("no GPU: experiment=bench_train_smoke (model=tiny, 30 steps a variant);")
    run = only_run(tmp_path, "train")
    ref, plain, row = json.loads((run / "bench_train.json").read_text())["rows"]
    assert row["device"] != "cuda" and row["tokens_per_s"] > 0
    assert (run / "runs" / "mha-r0.5" / "summary.json").is_file()
    # tokens/s in whole tokens with thousands separators (a CPU's few thousand read 0.00M before)
    assert re.search(rf"^\| mha \| [\d.]+M \| {row['tokens_per_s']:,.0f} \| 1.00 \| "
                     rf"{row['tokens_per_s'] / ref['tokens_per_s']:.2f} \|", out, re.MULTILINE), out

    # the reference: the stand-in built at the smoke shape (model=tiny, vocab 4096, batch 16), trained for the
    # same 15 steps, 5 of them warm-up; its row and the ratio to it
    assert ref["variant"] == "nanogpt" and ref["tokens_per_s"] > 0 and row["vs_nanogpt"] > 0
    assert ref["nanogpt"]["path"] == "nanoGPT" and ref["nanogpt"]["commit"] == commit
    calls = [json.loads(line) for line in (tmp_path / "nanoGPT" / "calls.jsonl").read_text().splitlines()]
    tiny = {"block_size": 128, "vocab_size": 4096, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0,
            "bias": False}
    assert [c["config"] for c in calls if c["call"] == "GPT"] == [tiny, tiny]  # meta copy (FLOPs), trained one
    assert [c for c in calls if c["call"] == "configure_optimizers"] == [{"call": "configure_optimizers",
                                                                          "device_type": "cpu"}]
    assert [c["shape"] for c in calls if c["call"] == "forward"] == [[16, 128]] * 15
    assert ref["shape"]["warmup_steps"] == 5 and ref["shape"]["timed_steps"] == 10
    assert re.search(rf"^\| nanogpt \| [\d.]+M \| {ref['tokens_per_s']:,.0f} \| - \| - \|", out, re.MULTILINE)

    # our model without the Trainer: the same model (parameters, FLOPs, cache), stepped 15 times by hand
    assert plain["variant"] == "mha (plain loop)" and plain["tokens_per_s"] > 0
    assert (plain["params"], plain["flops_per_token"], plain["kv_elements_per_token"]) == (
        row["params"], row["flops_per_token"], row["kv_elements_per_token"])
    assert plain["shape"] == ref["shape"] and plain["vs_mha"] == plain["tokens_per_s"] / row["tokens_per_s"]
    assert re.search(r"^\| mha \(plain loop\) \| ", out, re.MULTILINE)


def test_bench_train_repeats_every_row_and_reports_its_median_run(tmp_path):
    run_script("bench_train.py", "--variants", "mha", "--repeats", "2", "trainer.max_steps=8",
               "callbacks.throughput.warmup_steps=2", "callbacks.throughput.window=2", cwd=tmp_path)
    run = only_run(tmp_path, "train")
    (row,) = json.loads((run / "bench_train.json").read_text())["rows"]
    runs = [json.loads((run / "runs" / f"mha-r0.5-{i}" / "summary.json").read_text())["tokens_per_s"] for i in (1, 2)]
    assert row["tokens_per_s_runs"] == runs and row["tokens_per_s"] == min(runs)  # the lower of an even count


def test_bench_train_median_run_is_the_middle_one_by_tokens_per_s(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from bench_train import median_run

    runs = [{"tokens_per_s": t, "ms_per_step": 1e3 / t} for t in (3.0, 1.0, 2.0)]
    assert median_run(runs) == {"tokens_per_s": 2.0, "ms_per_step": 500.0, "tokens_per_s_runs": [3.0, 1.0, 2.0]}
    assert median_run(runs[:1]) == runs[0]  # one run: its row as it was


def test_bench_train_variant_names_its_own_overrides(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from bench_train import parse_variant, run_name

    assert parse_variant("mha") == ("mha", [])
    assert parse_variant("mha+fused_loss=true+optimizer.lr=1e-3") == ("mha", ["fused_loss=true", "optimizer.lr=1e-3"])
    assert run_name("mha", 0.5) == "mha-r0.5"
    assert run_name("mha+fused_loss=true+data.files=a/*.txt", 0.5) == "mha+fused_loss_true+data.files_a__.txt-r0.5"
    for spec in ("mha+fused_loss", "+fused_loss=true"):
        with pytest.raises(ValueError, match="is not ATTENTION"):
            parse_variant(spec)


def test_bench_train_nanogpt_path_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.py").write_text("class GPT:\n    pass\n")
    for path, says in (("empty", "no model.py there"), ("other", "has no GPTConfig")):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--nanogpt", path],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=script_env())
        assert proc.returncode == 1 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "logs").exists()  # nothing ran


def test_bench_train_names_unknown_variants_in_one_line_before_any_run(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--variants", "mha,foo",
                           "--plain-loop", "bar"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=script_env())
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: no attention config foo, bar; choose from gla2, gla4, gqa,")
    assert not (tmp_path / "logs").exists()  # nothing ran
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--repeats", "0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=script_env())
    assert proc.returncode == 2 and proc.stderr.strip().endswith("error: --repeats 0: every row runs at least once")
    assert not (tmp_path / "logs").exists()


def test_bench_decode_on_a_cpu_is_cpu_sized_and_writes_into_logs(tmp_path):
    proc = run_script("bench_decode.py", "--variants", "mha,gla2,gta,mla_rope:fused", "--contexts", "16,32",
                      "--iters", "2", cwd=tmp_path)
    assert proc.stdout.startswith("no GPU: --model tiny --contexts 16,32 --batches 1,8 (a CPU-sized benchmark;")
    run = only_run(tmp_path, "decode")
    result = json.loads((run / "bench_decode.json").read_text())
    assert result["model"] == "tiny" and len(result["rows"]) == 4 * 2 * 2  # variants x contexts x batches
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])
    # a variant with a rank is latent: it decodes absorbed by default (or as asked) and records its rank
    assert [(s["variant"], s["rank"]) for s in result["summary"]] == [("mha", None), ("gla2:absorbed", 0.5),
                                                                       ("gta", None), ("mla_rope:fused", 0.5)]
    for s in result["summary"]:  # each variant's wall time, printed as it ends
        assert s["wall_s"] > 0 and f"{s['variant']}: {s['wall_s']:.0f} s" in proc.stdout
    assert (run / "decode_tokens_per_s.png").is_file() and (run / "decode_cache_bytes.png").is_file()
    assert "No artists" not in proc.stderr  # the tokens/s plot is drawn at a batch that was measured


def test_bench_decode_warms_the_compile_cache_that_its_timed_pass_reads(tmp_path):
    """--warm-jobs: each variant compiles in a process of its own first, into torch.compile's on-disk cache; the
    timed pass then loads its graph from there (a cache hit) instead of compiling it again."""
    cache = tmp_path / "compile_cache"
    env = script_env(TORCHINDUCTOR_CACHE_DIR=str(cache), TORCH_LOGS="+inductor")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_decode.py"), "--variants", "mha",
                           "--contexts", "16", "--batches", "2", "--iters", "1", "--compile", "--warm-jobs", "1",
                           "--out", "out"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warmed 1 of 1 variants' compiled steps" in proc.stdout
    assert any(cache.rglob("*")) and "fx graph cache hit" in proc.stderr.lower()  # the timed pass's graph
    assert json.loads((tmp_path / "out" / "bench_decode.json").read_text())["rows"][0]["tokens_per_s"] > 0


@pytest.mark.parametrize(("variants", "message"), [
    ("mha,gta:naive", "variant gta:naive: only a latent variant (one with a rank) decodes naive, absorbed or fused"),
    ("mha,mlra_gated:fused", "variant mlra_gated:fused: a gated latent layer has no fused form"),
])
def test_bench_decode_refuses_decode_paths_a_variant_lacks(tmp_path, variants, message):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_decode.py"), "--variants", variants],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=script_env())
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "logs").exists()


def test_bench_tp_decode_on_a_cpu_is_a_gloo_smoke_into_logs(tmp_path):
    """Two spawned gloo processes; each row's per-device cache bytes, measured from the rank's real cache, are the
    formula's (GLA-2 at TP-2 caches one of its two blocks)."""
    run_script("bench_tp_decode.py", "--variants", "mla_rope,gla2,gqa", "--contexts", "16,32", "--iters", "2",
               cwd=tmp_path)
    result = json.loads((only_run(tmp_path, "tp_decode") / "bench_tp_decode_tp2.json").read_text())
    assert result["tp"] == 2 and result["device"] == "cpu" and len(result["rows"]) == 3 * 2 * 2
    for row in result["rows"]:
        assert row["measured_cache_bytes_per_token_per_device"] == row["cache_bytes_per_token_per_device"]
        # the all-reduce time has no bound by the step here: on busy CPUs both medians are noise
        assert row["tokens_per_s"] > 0 and row["allreduce_alone_ms"] > 0
    tiny_rope, tiny_latent = 32 // 2, 128 // 2  # model=tiny: d_model 128, 4 heads of 32; rank 0.5
    per_device = {r["variant"]: r["cache_elements_per_device"] for r in result["rows"]}
    assert per_device == {"mla_rope": tiny_latent + tiny_rope, "gla2": tiny_latent // 2 + tiny_rope, "gqa": 2 * 32}


def test_tp_decode_table_sets_each_tp_degree_beside_tp_1_and_the_baseline(tmp_path):
    """TP-1 and TP-2 runs into one folder, then the table: each TP-2 cell's speed-up is its tokens/s over TP-1's of
    the same variant, context and batch, read back from the files."""
    for nproc in ("1", "2"):
        run_script("bench_tp_decode.py", "--variants", "mla_rope,gla2", "--contexts", "16", "--batches", "2",
                   "--iters", "2", "--nproc", nproc, "--out", "tp", cwd=tmp_path)
    text = run_script("tp_decode_table.py", "tp", cwd=tmp_path).stdout
    rows = {(f["tp"], r["variant"]): r
            for f in (json.loads((tmp_path / "tp" / f"bench_tp_decode_tp{n}.json").read_text()) for n in (1, 2))
            for r in f["rows"]}
    rate = {key: row["tokens_per_s"] for key, row in rows.items()}
    gla2 = next(line for line in text.splitlines() if line.startswith("| gla2 | 16 |")).split(" | ")
    half = rows[2, "gla2"]["cache_bytes_per_token_per_device"]  # one of its two latent blocks, and the rotary key
    assert half < rows[1, "gla2"]["cache_bytes_per_token_per_device"]
    assert gla2[3:] == [f"{rate[1, 'gla2']:,.0f}", f"{rate[1, 'gla2'] / rate[1, 'mla_rope']:.2f}x", f"{half:,}",
                        f"{rate[2, 'gla2']:,.0f}", f"{rate[2, 'gla2'] / rate[1, 'gla2']:.2f}x",
                        f"{rate[2, 'gla2'] / rate[2, 'mla_rope']:.2f}x", gla2[-1]]
    assert gla2[-1].endswith("% |")  # the all-reduces' share of the TP-2 step
    assert (tmp_path / "tp" / "tp_decode_tokens_per_s.png").stat().st_size > 0
    assert (tmp_path / "tp" / "tp_decode.md").read_text() in text  # the tables, as printed


def test_committed_tp_decode_tables_are_what_the_script_writes_from_the_committed_json(tmp_path):
    shutil.copytree(REPO / "docs" / "tp_decode", tmp_path / "docs" / "tp_decode")
    folders = sorted(p.parent for p in (tmp_path / "docs" / "tp_decode").glob("*/tp_decode.md"))
    assert len(folders) >= 3
    for folder in folders:
        committed = (folder / "tp_decode.md").read_text()
        run_script("tp_decode_table.py", str(folder.relative_to(tmp_path)), cwd=tmp_path)
        assert (folder / "tp_decode.md").read_text() == committed, folder.name


def test_attention_md_holds_the_table_that_attention_table_prints(tmp_path):
    """docs/attention.md's table is printed by scripts/attention_table.py from the real modules: every row it prints
    at rank 0.5 (cache, parameters, FLOPs of each variant) stands in the committed file, so a change to a variant's
    cache or size that is not carried into the docs fails here."""
    rows = [line for line in run_script("attention_table.py", "--ranks", "0.5", cwd=tmp_path).stdout.splitlines()
            if line.startswith("| ")]
    committed = (REPO / "docs" / "attention.md").read_text()
    assert len(rows) > 15 and [row for row in rows if row not in committed] == []


def test_bench_latent_kernel_refuses_what_it_cannot_time_in_one_line(tmp_path):
    for args, says in ((["--attention", "mha"], "attention=mha is not a latent variant"),
                       ([], "needs a CUDA GPU (none here)")):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_latent_kernel.py"), *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=script_env())
        assert proc.returncode == 1 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.gpu
def test_bench_latent_kernel_times_every_tile_and_split_with_the_default_among_them(tmp_path):
    run_script("bench_latent_kernel.py", "--shapes", "1x512,4x1024", "--iters", "3", "--out", "out", cwd=tmp_path,
               cuda=True)
    bench = json.loads((tmp_path / "out" / "bench_latent_kernel.json").read_text())
    assert bench["copy_bandwidth_gbs"] > 100 and (bench["n_blocks"], bench["block_dim"], bench["rope_dim"]) == (
        1, 256, 32)
    for shape in ((1, 512), (4, 1024)):
        rows = [r for r in bench["rows"] if (r["batch"], r["positions"]) == shape]
        assert sum(r["default"] for r in rows) == 1 and len(rows) >= 12  # 12 tiles x at least one split count
        assert all(r["us"] > 0 and r["gb_per_s"] > 0 for r in rows)
