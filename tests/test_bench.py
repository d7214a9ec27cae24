"""The benchmark scripts as a user runs them without a GPU: results go to a folder under logs/, never into docs/."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def docs_state() -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (REPO / "docs").rglob("*") if p.is_file()}


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run scripts/<name> from `cwd` on the CPU (CUDA hidden); docs/ must stay as it was."""
    before = docs_state()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
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


def test_bench_train_on_a_cpu_runs_its_cpu_twin_into_logs(tmp_path):
    out = run_script("bench_train.py", "--variants", "mha", "trainer.max_steps=15",
                     "callbacks.throughput.warmup_steps=5", "callbacks.throughput.window=5", cwd=tmp_path).stdout
    assert out.startswith("no GPU: experiment=bench_train_smoke (model=tiny, 30 steps a variant);")
    run = only_run(tmp_path, "train")
    (row,) = json.loads((run / "bench_train.json").read_text())["rows"]
    assert row["device"] != "cuda" and row["tokens_per_s"] > 0
    assert (run / "runs" / "mha-r0.5" / "summary.json").is_file()
    # tokens/s in whole tokens with thousands separators (a CPU's few thousand read 0.00M before)
    assert re.search(rf"^\| mha \| [\d.]+M \| {row['tokens_per_s']:,.0f} \| 1.00 \|", out, re.MULTILINE), out


def test_bench_decode_on_a_cpu_is_cpu_sized_and_writes_into_logs(tmp_path):
    proc = run_script("bench_decode.py", "--variants", "mha,mla_rope", "--contexts", "16,32", "--iters", "2",
                      cwd=tmp_path)
    assert proc.stdout.startswith("no GPU: --model tiny --contexts 16,32 --batches 1,8 (a CPU-sized benchmark;")
    run = only_run(tmp_path, "decode")
    result = json.loads((run / "bench_decode.json").read_text())
    assert result["model"] == "tiny" and len(result["rows"]) == 2 * 2 * 2  # variants x contexts x batches
    assert (run / "decode_tokens_per_s.png").is_file() and (run / "decode_cache_bytes.png").is_file()
    assert "No artists" not in proc.stderr  # the tokens/s plot is drawn at a batch that was measured


def test_bench_tp_decode_on_a_cpu_is_a_gloo_smoke_into_logs(tmp_path):
    """Two spawned gloo processes; each row's per-device cache bytes, measured from the rank's real cache, are the
    formula's (GLA-2 at TP-2 caches one of its two blocks)."""
    run_script("bench_tp_decode.py", "--variants", "mla_rope,gla2,gqa", "--contexts", "16,32", "--iters", "2",
               cwd=tmp_path)
    result = json.loads((only_run(tmp_path, "tp_decode") / "bench_tp_decode.json").read_text())
    assert result["tp"] == 2 and result["device"] == "cpu" and len(result["rows"]) == 3 * 2 * 2
    for row in result["rows"]:
        assert row["measured_cache_bytes_per_token_per_device"] == row["cache_bytes_per_token_per_device"]
        assert row["tokens_per_s"] > 0
    tiny_rope, tiny_latent = 32 // 2, 128 // 2  # model=tiny: d_model 128, 4 heads of 32; rank 0.5
    per_device = {r["variant"]: r["cache_elements_per_device"] for r in result["rows"]}
    assert per_device == {"mla_rope": tiny_latent + tiny_rope, "gla2": tiny_latent // 2 + tiny_rope, "gqa": 2 * 32}
