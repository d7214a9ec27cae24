"""One model on several devices: the ranks split each step's batch of one process, and a run on 2 CPU processes
(gloo) trains as one process with their batches together."""

import json

import pytest
from conftest import read_metrics, run_train, series
from torch.utils.data import DataLoader

from latentlm.data.datamodule import StepSampler


def batches(size: int, batch_size: int, ranks: int = 1, rank: int = 0, skip: int = 0) -> list[list[int]]:
    sampler = StepSampler(size, batch_size, seed=3, num_replicas=ranks, rank=rank)
    sampler.set_epoch(1)
    sampler.skip_batches = skip
    return [b.tolist() for b in DataLoader(range(size), batch_size=batch_size, sampler=sampler, drop_last=True)]


@pytest.mark.parametrize("size", [96, 101, 103])  # whole global batches, and 5 or 7 windows left over
def test_the_ranks_of_a_step_see_one_process_batch(size):
    """2 ranks with batch 4 see, step by step, the windows of 1 process with batch 8, and as many steps."""
    whole = batches(size, 8)
    rank0, rank1 = batches(size, 4, ranks=2, rank=0), batches(size, 4, ranks=2, rank=1)
    assert len(rank0) == len(rank1) == len(whole) == size // 8
    for step, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
        assert sorted(a + b) == sorted(whole[step]), step
    assert len(StepSampler(size, 4, seed=3, num_replicas=2, rank=1)) == size // 8 * 4


def test_a_resumed_rank_goes_on_from_the_global_batch_it_stopped_at():
    """skip_batches counts global batches: 2 ranks resumed at step 5 see the batches 2 ranks (or 1 process of
    their global batch) would have seen from step 5 on."""
    for rank in (0, 1):
        assert batches(100, 4, ranks=2, rank=rank, skip=5) == batches(100, 4, ranks=2, rank=rank)[5:]
    assert batches(100, 8, skip=5) == batches(100, 8)[5:]


@pytest.mark.parametrize("size", [7, 8])
def test_validation_ranks_see_every_window_once(size):
    """Two ranks split the validation windows without repeating any, also when their number is odd."""
    from latentlm.data.datamodule import SplitSampler

    parts = [list(SplitSampler(size, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(size))
    assert [len(SplitSampler(size, 2, r)) for r in range(2)] == [len(p) for p in parts]
    assert list(SplitSampler(size)) == list(range(size))  # one process: every window, in order


def test_ddp_on_two_cpu_processes_trains_as_one_process_of_their_batch(data_root, tmp_path):
    """`trainer=ddp` on 2 gloo processes with batch 4 against 1 process with batch 8, same seed: the same windows
    a step, so the same losses up to float32 rounding. The gradients differ only in how the sum is ordered (each
    rank's mean, then the all-reduce mean), about 1e-7 relative; 20 steps left the logged losses within 1e-7 of
    each other. The tolerance, 1e-5, is far below what other windows give: another shuffle seed moves the losses by
    about 1e-2 (2e-3 relative)."""
    # Validation over the whole split, 595 windows of 31 tokens (an odd number): the ranks split them without
    # repeating one (SplitSampler; a padding sampler would count one twice, 2e-4 relative off on its own).
    common = ("experiment=smoke", "trainer.max_steps=20", "trainer.limit_val_batches=1.0", "data.seq_len=31",
              f"paths.log_dir={tmp_path}/logs")
    run_train(*common, "data.batch_size=8", f"hydra.run.dir={tmp_path}/one", root=data_root)
    run_train(*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4",
              root=data_root, timeout=180)
    (ddp,) = (tmp_path / "logs" / "train" / "runs").iterdir()  # the second process went on in the same folder
    assert [p.name for p in ddp.rglob("summary.json")] == ["summary.json"]
    assert {p.name for p in ddp.glob("*.log")} == {"train.log", "train_ddp_process_1.log"}
    one = tmp_path / "one"
    for key in ("train/loss", "val/loss"):
        a, b = series(read_metrics(one), key), series(read_metrics(ddp), key)
        assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 2, key
        assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-5), key
    result = json.loads((ddp / "summary.json").read_text())
    assert result["status"] == "ok" and result["tokens"] == 20 * 8 * 31  # steps x global batch x seq_len
    single = json.loads((one / "summary.json").read_text())
    assert result["val_loss_final"] == pytest.approx(single["val_loss_final"], rel=1e-5)
    # every validation window counted once over the ranks: 595 x 31 tokens, as in one process
    assert [h["val_tokens"] for h in result["val_history"]] == [h["val_tokens"] for h in single["val_history"]]
    assert single["val_history"][-1]["val_tokens"] == 595 * 31


def test_a_sweep_on_several_launched_processes_is_one_line(data_root, tmp_path):
    """Lightning would start rank 1 with the sweep's own command line, which runs the whole sweep again."""
    sweep = tmp_path / "sweep"
    proc = run_train("-m", "experiment=smoke", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     f"hydra.sweep.dir={sweep}", root=data_root, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: trainer.devices=2 starts a process a device by running the command line again, which would run the "
        "whole -m sweep in each; run these jobs one at a time"
    )
    assert not (sweep / "0").exists()  # the job's folder held no more than its config and tokenizer
