"""Devices for a job: requests the machine cannot meet stop with one line; parallel sweep workers get a GPU each."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, run_train

from latentlm import devices
from latentlm.config import ConfigError


@pytest.mark.parametrize(
    ("trainer", "gpus", "error"),
    [
        ({"devices": 2}, 1, "trainer.devices=2 asks for 2 GPUs; this machine has 1"),
        ({"accelerator": "gpu", "devices": [0, 1, 2]}, 2,
         r"trainer.devices=\[0, 1, 2\] asks for 3 GPUs; this machine has 2"),
        ({"accelerator": "cuda"}, 0, "trainer.accelerator=cuda asks for a CUDA GPU; this machine has none"),
        ({"strategy": "fsdp", "accelerator": "cpu", "devices": 2}, 0, "trainer.strategy=fsdp shards the model"),
        ({"strategy": "ddp", "devices": -1}, 0, "trainer.devices=-1 asks for every GPU, and this run has none"),
    ],
)
def test_a_request_the_machine_cannot_meet_is_one_line(trainer, gpus, error):
    with pytest.raises(ConfigError, match=error):
        devices.check_trainer_devices(trainer, gpus)


@pytest.mark.parametrize(
    ("trainer", "gpus"),
    [({"devices": 2, "accelerator": "cpu", "strategy": "ddp"}, 0), ({"devices": 2}, 0), ({"devices": 2}, 2),
     ({"devices": "auto", "strategy": "fsdp"}, 4), ({"devices": -1}, 1)],
)
def test_requests_the_machine_meets_pass(trainer, gpus):
    devices.check_trainer_devices(trainer, gpus)  # e.g. 2 CPU processes, or auto / -1: whatever there is


def test_each_worker_process_claims_a_gpu_of_its_own(tmp_path):
    """Four workers of a sweep with n_jobs=4 at once on a 2-GPU machine: they share the GPUs two and two; a fifth
    process gets the one-line error. One started after they end gets a GPU again."""
    code = (
        "import sys, time; from latentlm.devices import claim_gpu\n"
        "try:\n    print(claim_gpu(sys.argv[1], 2, 4), flush=True)\nexcept ValueError as e:\n    print(e, flush=True)\n"
        "time.sleep(3)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
             for _ in range(5)]
    answers = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    too_many = f"more worker processes than hydra.launcher.n_jobs=4 claim a GPU in {tmp_path.resolve()}"
    assert answers == ["0", "0", "1", "1", too_many]
    again = subprocess.run([sys.executable, "-c", code.replace("time.sleep(3)", ""), str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == "0"


def test_a_worker_keeps_its_gpu_for_every_job(tmp_path):
    first = devices.claim_gpu(tmp_path, 2, 2)
    assert devices.claim_gpu(tmp_path, 2, 2) == first


@pytest.mark.parametrize("launcher", ["gpus", "submitit_local"])
def test_a_sweep_runs_through_each_launcher(launcher, data_root, tmp_path):
    """hydra/launcher=gpus (joblib worker processes; on a CPU machine one worker a job here) and submitit's local
    executor (the SLURM launcher's code path, offline) run every job of a sweep to its summary."""
    sweep = tmp_path / "sweep"
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "gpus" else ["hydra.launcher.timeout_min=10"]
    run_train("-m", f"hydra/launcher={launcher}", *extra, "experiment=smoke", "seed=0,1", "trainer.max_steps=3",
              "trainer.val_check_interval=3", f"hydra.sweep.dir={sweep}", root=data_root, timeout=300)
    summaries = [json.loads((sweep / job / "summary.json").read_text()) for job in ("0", "1")]
    assert [(s["status"], s["seed"], s["steps"]) for s in summaries] == [("ok", 0, 3), ("ok", 1, 3)]


def test_the_slurm_launcher_asks_one_gpu_a_job():
    from latentlm.config import compose_train

    launcher = compose_train(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], hydra_config=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
