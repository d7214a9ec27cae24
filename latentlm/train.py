"""Hydra entry point: `python -m latentlm.train attention=mla_rope rank=0.5` (add -m to sweep)."""

import json
import logging
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from latentlm.callbacks import PlainProgress, Throughput, train_flops_per_token
from latentlm.config import CONFIG_DIR, ConfigError, check_cli_choices, fail, register_resolvers, validate
from latentlm.lit import LitGPT

log = logging.getLogger(__name__)
register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one model as configured and return (and write) its summary."""
    validate(cfg)
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    datamodule.export_tokenizer(out_dir)
    build_net = partial(instantiate, cfg.model, vocab_size=datamodule.vocab_size, _convert_="all")
    net = build_net()
    log.info(
        "model: %s, attention=%s rank=%s: %s parameters (%s non-embedding), KV cache %d elements/token",
        HydraConfig.get().runtime.choices.model,
        cfg.attention.name,
        cfg.rank,
        f"{net.num_params():,}",
        f"{net.num_params(non_embedding=True):,}",
        net.kv_cache_elements(),
    )

    cuda = torch.cuda.is_available()
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls left under bf16 autocast
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if trainer_cfg["precision"] == "auto":
        trainer_cfg["precision"] = "bf16-mixed" if cuda else "32-true"
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    interactive = sys.stderr.isatty()
    if not interactive:
        callbacks.append(PlainProgress(every=trainer_cfg["log_every_n_steps"] * 5))
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    if throughput is not None:
        throughput.flops_per_token = train_flops_per_token(build_net, cfg.data.seq_len)
    loggers = [instantiate(lg) for lg in cfg.get("logger", {}).values()]
    trainer: L.Trainer = instantiate(
        trainer_cfg, callbacks=callbacks, logger=loggers, enable_progress_bar=interactive
    )
    compile_mode = cfg.compile_mode if (cuda if cfg.compile == "auto" else cfg.compile) else None
    module = LitGPT(
        net,
        instantiate(cfg.optimizer),
        cfg.scheduler.warmup_steps,
        cfg.scheduler.min_lr_ratio,
        cfg.label_smoothing,
        compile_mode=compile_mode,
    )
    hparams = {
        "rank": cfg.rank,
        "attention": cfg.attention.name,
        "model": HydraConfig.get().runtime.choices.model,
        "seed": cfg.seed,
        "params": net.num_params(),
        "params_non_embedding": net.num_params(non_embedding=True),
        **_flatten(OmegaConf.to_container(cfg, resolve=True), "config/"),
    }
    for lg in trainer.loggers:
        lg.log_hyperparams(hparams)
    if datamodule.entropy_floor is not None:
        for lg in trainer.loggers:
            lg.log_metrics({"data/entropy_floor": datamodule.entropy_floor}, step=0)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    final = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    summary = _summary(cfg, trainer, net, datamodule, final, throughput, time.time() - started, trainer_cfg)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("summary: %s", out_dir / "summary.json")
    _finish_wandb(trainer, summary)
    return summary


def _summary(cfg, trainer, net, datamodule, final, throughput, wall_time, trainer_cfg) -> dict[str, Any]:
    ckpt = trainer.checkpoint_callback
    best = float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None else None
    best = min(v for v in (best, final["val/loss"]) if v is not None)
    elements = net.kv_cache_elements()
    floor = datamodule.entropy_floor
    return {
        "attention": cfg.attention.name,
        "rank": cfg.rank,
        "model": HydraConfig.get().runtime.choices.model,
        "seed": cfg.seed,
        "params": net.num_params(),
        "params_non_embedding": net.num_params(non_embedding=True),
        "kv_cache": {
            "elements_per_token_per_layer": [b.attn.kv_cache_elements() for b in net.blocks],
            "elements_per_token": elements,
            "bytes_per_token_bf16": 2 * elements,  # a bf16 cache, as decoding uses on GPU
        },
        "val_loss_best": best,
        "val_loss_final": final["val/loss"],
        "val_acc_final": final["val/acc"],
        "val_ppl_final": final["val/ppl"],
        "entropy_floor": floor,
        "gap_to_floor": final["val/loss"] - floor if floor is not None else None,
        "tokens_per_s": throughput.tokens_per_s if throughput is not None else None,
        "flops_per_token": throughput.flops_per_token if throughput is not None else None,
        "mfu": throughput.mfu if throughput is not None else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "steps": trainer.global_step,
        "tokens": trainer.global_step * cfg.data.batch_size * cfg.data.seq_len,
        "wall_time_s": wall_time,
        "precision": trainer_cfg["precision"],
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": L.__version__,
        },
        "git_commit": _git_commit(),
    }


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


def _finish_wandb(trainer: L.Trainer, summary: dict[str, Any]) -> None:
    """Put summary.json into this job's W&B run summary and end the run, so each multirun job is its own run."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update(summary)
            lg.experiment.finish()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except ConfigError as err:
        fail(err)


def main() -> None:
    try:
        check_cli_choices(sys.argv[1:])
    except ConfigError as err:
        fail(err)
    _hydra_main()


if __name__ == "__main__":
    main()
