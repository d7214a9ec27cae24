"""Hydra entry point: `python -m latentlm.train attention=mla_rope rank=0.5` (add -m to sweep)."""

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from latentlm.config import (
    CONFIG_DIR,
    ConfigError,
    check_cli_choices,
    check_cli_keys,
    compile_mode,
    fail,
    register_resolvers,
    validate,
)
from latentlm.timings import describe, process_age_s

log = logging.getLogger(__name__)
register_resolvers()
_first_job = True  # this process's first job pays the start-up (imports, Hydra); later jobs of a sweep do not


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one model as configured and return (and write) its summary.

    Every job that starts work leaves a summary.json: "status" is "ok", "diverged" (a non-finite loss stopped
    it; the last checkpoint is the last good one), "failed" (an exception, re-raised after the summary is
    written) or "skipped" (a sweep job identical to one already trained in the same sweep, see `_claim`).
    Bad input found on the way (a ConfigError, e.g. unusable data or a refused resume) writes no summary: it
    stops the command with one line, and a refused resume leaves the resumed run's own summary as it was.

    On several devices (trainer=ddp), Lightning runs this command again in one process for each further device,
    in the same run dir (its launcher adds hydra.run.dir=<this run's dir> and hydra.output_subdir=null). Every
    process trains; the run's own files (config.yaml, summary.json, judge samples) are rank 0's alone.
    """
    global _first_job
    started, clock = time.time(), time.perf_counter()
    timings: dict[str, float] = {"startup": (process_age_s() or 0.0) if _first_job else 0.0}
    _first_job = False
    validate(cfg)
    # torch.compile's on-disk caches (Inductor's and AOTAutograd's graphs, Triton's kernels) in one folder, so a model
    # compiled before, by any job of any sweep launched here, compiles from them. Set before torch is imported,
    # which fixes the folder; a user's TORCHINDUCTOR_CACHE_DIR wins.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg.paths.compile_cache_dir).resolve()))
    # torch and Lightning take seconds to import: only once the config is valid, so bad input fails fast.
    from lightning.pytorch.utilities import rank_zero_only

    from latentlm.callbacks import Diverged

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # another rank's config differs in ${now:} values such as the W&B group
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    else:
        _console_warnings_only()
    summary: dict[str, Any] = _identity(cfg)
    duplicate_of = _claim(cfg)
    if duplicate_of is not None:
        log.info("skipped: %s does not use rank; this sweep trains it once (%s)", cfg.attention.name, duplicate_of)
        return _write_summary(out_dir, {**summary, "status": "skipped", "duplicate_of": duplicate_of})
    try:
        summary |= {"status": "ok", "error": None, **_fit(cfg, out_dir, timings, clock)}
    except Diverged as err:
        log.error("diverged: %s", err)
        summary |= {"status": "diverged", "error": str(err), "steps": err.step}
    except ConfigError:
        raise  # bad input found while reading it (e.g. a text file): one line, no run
    except Exception as err:
        summary |= {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]}
        _write_summary(out_dir, summary | {"wall_time_s": time.time() - started})
        raise
    finally:
        finished = time.perf_counter()
        _finish_wandb(summary)
        timings["after_fit"] = timings.get("after_fit", 0.0) + time.perf_counter() - finished
    timings["total"] = timings["startup"] + time.perf_counter() - clock
    log.info("timings: %s", describe(timings))
    return _write_summary(out_dir, summary | {"wall_time_s": time.time() - started, "timings": timings})


def _fit(cfg: DictConfig, out_dir: Path, timings: dict[str, float], started: float) -> dict[str, Any]:
    """Build data, model and trainer, train, and return the run's measured results; fills `timings` (seconds a
    phase, see latentlm.timings) with `started` (perf_counter) as the start of set-up."""
    import lightning as L
    import torch
    from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

    from latentlm.callbacks import (
        PhaseTimes,
        PlainProgress,
        StopOnNonFinite,
        Throughput,
        TimedCheckpointIO,
        train_flops_per_token,
    )
    from latentlm.data.tokenizer import run_tokenizer
    from latentlm.devices import check_trainer_devices, claim_gpu
    from latentlm.loggers import keep_csv_rows, quiet_libraries

    quiet_libraries()
    # The constructors check their values: build the model on the meta device (no memory, no time), and the data
    # module (its source and tokenizer check their settings and files; the data is read in setup).
    with torch.device("meta"):
        _build(cfg.model, "model: ", vocab_size=1)
    cuda = torch.cuda.is_available()
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_trainer_devices(trainer_cfg, torch.cuda.device_count())
    if _jobs_in_parallel_processes() and torch.cuda.device_count() > 1:
        hydra_cfg = HydraConfig.get()
        gpu = claim_gpu(Path(hydra_cfg.sweep.dir), torch.cuda.device_count(), hydra_cfg.launcher.n_jobs)
        torch.cuda.set_device(gpu)  # this worker's GPU, also for the judge after fit
        trainer_cfg["devices"] = [gpu]
        log.info("this worker process trains its sweep jobs on GPU %d", gpu)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _build(cfg.data)
    datamodule.setup()
    datamodule.export_tokenizer(out_dir)
    build_net = partial(instantiate, cfg.model, vocab_size=datamodule.vocab_size, _convert_="all")
    mode = compile_mode(cfg, cuda)
    if mode is not None:
        # Every job of a sweep traces from scratch. Otherwise torch.compile, seeing a second model of other
        # sizes in the same process, marks them dynamic: later jobs would train with other (symbolic-shape) kernels
        # than the first, and on an H200 that recompilation under CUDA graphs segfaulted.
        torch._dynamo.reset()
    module = instantiate(cfg.module, vocab_size=datamodule.vocab_size, tokenizer=run_tokenizer(out_dir),
                         compile_mode=mode, compile_validation=cfg.compile_validation,
                         fused_loss=cfg.fused_loss, _convert_="all")
    net = module.net
    log.info(
        "model: %s, attention=%s rank=%s: %s parameters (%s non-embedding), KV cache %d elements/token",
        HydraConfig.get().runtime.choices.model,
        cfg.attention.name,
        _rank(cfg),
        f"{net.num_params():,}",
        f"{net.num_params(non_embedding=True):,}",
        net.kv_cache_elements(),
    )

    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls left under bf16 autocast
    if trainer_cfg["precision"] == "auto":
        trainer_cfg["precision"] = "bf16-mixed" if cuda else "32-true"
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    callbacks.append(StopOnNonFinite(every=trainer_cfg["log_every_n_steps"]))
    interactive = sys.stderr.isatty()
    if not interactive:
        callbacks.append(PlainProgress(every=trainer_cfg["log_every_n_steps"] * 5))
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    if throughput is not None:
        throughput.flops_per_token = train_flops_per_token(build_net, cfg.data.seq_len)
    loggers = [instantiate(lg) for lg in cfg.get("logger", {}).values()]
    resumed_here = _resumes_in(cfg, out_dir)
    if resumed_here:
        step = torch.load(cfg.ckpt_path, map_location="cpu", mmap=True, weights_only=False)["global_step"]
        log.info("resuming at step %d in the checkpoint's own run folder %s: its metrics, checkpoints and summary go "
                 "on there", step, out_dir)
        keep_csv_rows(loggers, before_step=step)
    elif cfg.ckpt_path:
        log.info("resuming %s in a new run folder %s", cfg.ckpt_path, out_dir)
    # A background thread writes the checkpoints when async_checkpoints is set; training waits only for the hand-off.
    checkpoint_io = TimedCheckpointIO(AsyncCheckpointIO(TorchCheckpointIO()) if cfg.async_checkpoints else None)
    phase_times = PhaseTimes(checkpoint_io)
    trainer = instantiate(
        trainer_cfg, callbacks=[*callbacks, phase_times], logger=loggers, enable_progress_bar=interactive,
        plugins=[checkpoint_io],
    )
    if HydraConfig.get().mode == RunMode.MULTIRUN and trainer.num_devices > 1 and (
        not trainer.strategy.cluster_environment.creates_processes_externally
    ):  # Lightning's launcher starts the other ranks with this process's command line, here a whole -m sweep
        raise ConfigError(f"trainer.devices={trainer_cfg['devices']} starts a process a device by running the command "
                          "line again, which would run the whole -m sweep in each; run these jobs one at a time")
    params = {"params": net.num_params(), "params_non_embedding": net.num_params(non_embedding=True)}
    hparams = {**_identity(cfg), **params, **_flatten(OmegaConf.to_container(cfg, resolve=True), "config/")}
    hparams.pop("config")
    for lg in trainer.loggers:
        lg.log_hyperparams(hparams)
    if datamodule.entropy_floor is not None and not resumed_here:  # a resumed run's CSV has it from its first part
        for lg in trainer.loggers:
            lg.log_metrics({"data/entropy_floor": datamodule.entropy_floor}, step=0)

    timings["setup"] = time.perf_counter() - started  # Lightning's own set-up inside fit is fit_start
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    timings.update(phase_times.phases())
    after_fit = time.perf_counter()
    history = module.val_history
    if not history or history[-1]["step"] != trainer.global_step:  # else the last validation was at the end
        trainer.validate(module, datamodule=datamodule, verbose=False)
    final, best = history[-1], min(history, key=lambda h: h["val_loss"])
    elements = net.kv_cache_elements()
    floor = datamodule.entropy_floor
    judge = _judge(cfg, net, datamodule, out_dir) if trainer.is_global_zero else None
    timings["after_fit"] = time.perf_counter() - after_fit
    return {
        **params,
        "kv_cache": {
            "elements_per_token_per_layer": [b.attn.kv_cache_elements() for b in net.blocks],
            "elements_per_token": elements,
            "bytes_per_token_bf16": 2 * elements,  # a bf16 cache, as decoding uses on GPU
        },
        "val_loss_best": best["val_loss"],
        "val_loss_final": final["val_loss"],
        "val_acc_best": best["val_acc"],  # at the validation with the best loss
        "val_acc_final": final["val_acc"],
        "val_ppl_final": math.exp(final["val_loss"]),
        "val_history": history,
        "entropy_floor": floor,
        "gap_to_floor": final["val_loss"] - floor if floor is not None else None,
        "judge": judge,
        "tokens_per_s": throughput.tokens_per_s if throughput is not None else None,
        "flops_per_token": throughput.flops_per_token if throughput is not None else None,
        "mfu": throughput.mfu if throughput is not None else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "steps": trainer.global_step,
        "tokens": trainer.global_step * cfg.data.batch_size * trainer.world_size * cfg.data.seq_len,  # every rank's
        "precision": trainer_cfg["precision"],
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": L.__version__,
        },
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _jobs_in_parallel_processes() -> bool:
    """Whether this is a sweep job that runs beside others in worker processes of this machine (joblib, as
    hydra/launcher=gpus uses it), so that each worker needs a GPU of its own."""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and "JoblibLauncher" in str(hydra_cfg.launcher.get("_target_"))


def _build(node: DictConfig, prefix: str = "", **kwargs: Any) -> Any:
    """instantiate(node), with a constructor's ValueError (a bad value) as the one-line ConfigError."""
    try:
        return instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as err:
        if not isinstance(err.__cause__, ValueError):
            raise
        raise ConfigError(f"{prefix}{err.__cause__}") from None


def _resumes_in(cfg: DictConfig, out_dir: Path) -> bool:
    """Whether this run resumes from a checkpoint of the run folder it writes to (see config.run_dir)."""
    return bool(cfg.ckpt_path) and Path(cfg.ckpt_path).resolve().parent.parent == out_dir.resolve()


def _rank(cfg: DictConfig) -> float | None:
    """The latent rank where the attention has one; None where rank does not change the model (e.g. MHA)."""
    return cfg.rank if "rank" in cfg.attention else None


def _identity(cfg: DictConfig) -> dict[str, Any]:
    """What a run is: the keys compare groups and pairs runs by, and the whole resolved config."""
    return {
        "experiment": cfg.task_name,
        "sweep_id": cfg.get("sweep_id"),
        "attention": cfg.attention.name,
        "twin": cfg.attention.get("twin"),
        "rank": _rank(cfg),
        "model": HydraConfig.get().runtime.choices.model,
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _claim(cfg: DictConfig) -> str | None:
    """In a sweep over rank, train a variant that has no rank once: None if this job trains, else the job that does.

    The first job of the sweep with the same overrides but rank claims them with a file created exclusively in
    the sweep dir, so this holds for parallel launchers too.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or _rank(cfg) is not None:
        return None
    overrides = sorted(o for o in hydra_cfg.overrides.task if not o.startswith("rank="))
    claims = Path(hydra_cfg.sweep.dir) / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / hashlib.sha1(" ".join(overrides).encode()).hexdigest()
    try:
        with open(path, "x") as f:
            f.write(hydra_cfg.runtime.output_dir)
        return None
    except FileExistsError:
        return path.read_text()


def _judge(cfg: DictConfig, net: Any, datamodule: Any, out_dir: Path) -> dict[str, Any] | None:
    """Grade `judge.samples` stories sampled from the trained model with the story grammar (latentlm.judge); the
    samples are kept in judge_samples.txt."""
    from latentlm.data.pipeline import SyntheticStories

    if not cfg.judge.samples or not isinstance(getattr(datamodule, "source", None), SyntheticStories):
        return None
    import torch

    from latentlm.judge import judge_texts, sample_stories

    # Lightning hands the model back on the CPU after fit; sampling belongs on the accelerator.
    net.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    samples = sample_stories(net, datamodule.cache.encoding(), cfg.judge.samples, temperature=cfg.judge.temperature,
                             seed=cfg.seed)
    (out_dir / "judge_samples.txt").write_text("\n<|endoftext|>\n".join(samples))
    return judge_texts(samples) | {"temperature": cfg.judge.temperature}


def _console_warnings_only() -> None:
    """On a rank other than 0, print only warnings and errors: its other lines repeat rank 0's, and go to its own
    log file (train_ddp_process_<rank>.log) only."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def _write_summary(out_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json (rank 0 only, on several devices) and return the summary."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return summary
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("summary (%s): %s", summary["status"], out_dir / "summary.json")
    return summary


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"d_model": 512}} -> {"model/d_model": 512}: one W&B config column a setting."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}/")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _finish_wandb(summary: dict[str, Any]) -> None:
    """Put the summary into this job's W&B run and end the run (as failed unless "ok"), so each multirun job is a
    run of its own, also after a failed job."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    wandb.run.summary.update({k: v for k, v in summary.items() if k not in ("config", "val_history")})
    wandb.finish(exit_code=0 if summary.get("status") == "ok" else 1)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        result = train(cfg)
    except ConfigError as err:
        _remove_run_dir_left_empty()
        fail(err)
    if result["status"] == "diverged" and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(1)  # a sweep goes on to its next job; a single run tells the shell


def _remove_run_dir_left_empty() -> None:
    """Hydra makes the run dir before the config is checked: remove it again if it holds only Hydra's files, the
    config and the tokenizer (bad input found while reading data, or the trainer's, comes after config.yaml is
    written; a resumed run's folder holds more and stays)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    kept = (".hydra", "config.yaml", "tokenizer.json", "tokenizer.tiktoken")
    if all(p.name in kept or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


def main() -> None:
    try:
        check_cli_choices(sys.argv[1:])
        check_cli_keys(sys.argv[1:])
    except ConfigError as err:
        fail(err)
    _hydra_main()


if __name__ == "__main__":
    main()
