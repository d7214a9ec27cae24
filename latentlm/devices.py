"""Which devices a job trains on: the trainer's request checked against the machine before any work, and a GPU for
each worker process when a sweep runs its jobs in parallel processes (hydra/launcher=gpus)."""

import fcntl
from pathlib import Path
from typing import IO, Any

from latentlm.config import ConfigError

_held: dict[Path, tuple[int, IO]] = {}  # sweep dir -> (GPU index, its open lock file): held while the process lives


def check_trainer_devices(trainer: dict[str, Any], gpus: int) -> None:
    """Stop with one line when the trainer asks for devices or a strategy this machine (`gpus` CUDA devices) lacks."""
    accelerator, devices = str(trainer.get("accelerator", "auto")), trainer.get("devices", 1)
    strategy = str(trainer.get("strategy", "auto"))
    if "fsdp" in strategy and gpus == 0:
        raise ConfigError(f"trainer.strategy={strategy} shards the model over CUDA GPUs; this machine has none")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} asks for a CUDA GPU; this machine has none")
    if not on_gpu and devices == -1:
        raise ConfigError("trainer.devices=-1 asks for every GPU, and this run has none; on a CPU give a number of "
                          "processes, e.g. trainer.devices=2")
    wanted = len(devices) if isinstance(devices, list) else devices
    if on_gpu and isinstance(wanted, int) and wanted > gpus:
        raise ConfigError(f"trainer.devices={devices} asks for {wanted} GPUs; this machine has {gpus}")


def claim_gpu(sweep_dir: Path, gpus: int, workers: int) -> int:
    """The GPU of this worker process in a sweep whose `workers` jobs run at once in parallel processes: the worker
    takes the first of `workers` slots whose lock file in the sweep dir no other live process holds, and slot s
    trains on GPU s mod `gpus` (more workers than GPUs share them evenly). The lock lasts as long as the process, so
    a worker keeps its GPU for every job it runs, and a slot is free again when its worker ends."""
    sweep_dir = Path(sweep_dir).resolve()
    if sweep_dir in _held:
        return _held[sweep_dir][0]
    locks = sweep_dir / ".gpus"
    locks.mkdir(parents=True, exist_ok=True)
    for slot in range(max(workers, gpus)):
        lock = open(locks / f"{slot}.lock", "w")  # noqa: SIM115 (held open: the lock lives with the file)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _held[sweep_dir] = (slot % gpus, lock)
        return slot % gpus
    raise ConfigError(f"more worker processes than hydra.launcher.n_jobs={workers} claim a GPU in {sweep_dir}")
