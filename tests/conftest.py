import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning  # noqa: F401  (imported first here: its log handlers keep the real stderr, not a test's capture)
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parent.parent
SHORT_RUN = ("experiment=smoke", "trainer.max_steps=6", "trainer.val_check_interval=3")  # two validations


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The one rule for `@pytest.mark.gpu` tests: skipped, not failed, where CUDA is absent."""
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (make test-gpu on a GPU machine)")


def run_train(
    *overrides: str, root: Path, check: bool = True, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run `python -m latentlm.train` as a user would, with data and logs under `root`."""
    flags = [a for a in overrides if a.startswith("-")]  # Hydra wants -m before the overrides
    overrides = tuple(a for a in overrides if not a.startswith("-"))
    # torch, imported here, sets TORCHINDUCTOR_CACHE_DIR to its default: a user's command starts without it
    environment = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "TORCHINDUCTOR_CACHE_DIR")}
    environment.update({"WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **(env or {})})
    proc = subprocess.run(
        [sys.executable, "-m", "latentlm.train", *flags, f"paths.root_dir={root}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def run_main(capsys, main: Callable[[], None], *argv: str) -> tuple[int, str, str]:
    """Run a CLI entry point in this process on argv, as a user's command line: its exit status, stdout, stderr."""
    saved = sys.argv
    sys.argv = ["prog", *argv]
    GlobalHydra.instance().clear()
    capsys.readouterr()  # only this run's output
    try:
        main()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def series(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every row that logged `key`."""
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def gpu_step_losses(root: Path, run_dir: Path, *overrides: str) -> dict[int, float]:
    """Each step's training loss of a 20-step smoke run on a GPU (bf16-mixed) with these overrides."""
    run_train("experiment=smoke", *overrides, "trainer.max_steps=20", "trainer.log_every_n_steps=1",
              f"hydra.run.dir={run_dir}", root=root, timeout=600)
    assert json.loads((run_dir / "summary.json").read_text())["precision"] == "bf16-mixed"
    losses = dict(series(read_metrics(run_dir), "train/loss"))
    assert len(losses) == 20
    return losses


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One root for every CLI test, so the smoke corpus is built once and its cache reused."""
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="session")
def smoke_run(data_root, tmp_path_factory) -> Path:
    """One finished CLI run (mla_rope at rank 0.5) that several tests read."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    run_train("experiment=smoke", "attention=mla_rope", "rank=0.5", f"hydra.run.dir={run_dir}", root=data_root)
    return run_dir


@pytest.fixture(scope="session")
def compiled_run(data_root, tmp_path_factory) -> Path:
    """One finished SHORT_RUN trained with compile=true (torch.compile also runs on CPU; it takes a minute or two)."""
    run_dir = tmp_path_factory.mktemp("compiled") / "run"
    run_train(*SHORT_RUN, "compile=true", f"hydra.run.dir={run_dir}", root=data_root, timeout=600)
    return run_dir
