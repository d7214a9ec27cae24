"""Config helpers: resolvers, composing the train config, the one-line checks that run before any work, and CLI
group-choice checks."""

import difflib
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# An installed wheel holds the repo's configs/ as latentlm/configs (pyproject.toml maps it); a checkout has configs/
# beside the package.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
if not CONFIG_DIR.is_dir():
    CONFIG_DIR = CONFIG_DIR.parent.parent / "configs"
GROUPS = (
    "model",
    "attention",
    "data",
    "tokenizer",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "experiment",
)


class ConfigError(ValueError):
    """A bad config value: the message is one line naming the key, the value and what is allowed."""


def register_resolvers() -> None:
    """`${lm.wandb_offline:}`: W&B stays offline unless the user has an API key. `${lm.run_dir:ckpt_path,new_dir}`:
    see `run_dir`. `${lm.gpus:}`: the number of CUDA GPUs here, at least 1 (hydra/launcher=gpus' worker count)."""
    if not OmegaConf.has_resolver("lm.wandb_offline"):
        OmegaConf.register_new_resolver("lm.wandb_offline", lambda: not os.environ.get("WANDB_API_KEY"))
    if not OmegaConf.has_resolver("lm.run_dir"):
        OmegaConf.register_new_resolver("lm.run_dir", run_dir)
    if not OmegaConf.has_resolver("lm.gpus"):
        OmegaConf.register_new_resolver("lm.gpus", gpu_count)


def gpu_count() -> int:
    """CUDA GPUs on this machine, at least 1 (torch is imported only when a config asks)."""
    import torch

    return max(torch.cuda.device_count(), 1)


def run_dir(ckpt_path: str | None, new_dir: str) -> str:
    """Where a training run writes: a run resumed from `<run>/checkpoints/*.ckpt` goes on in `<run>`, so its
    checkpoints, metrics and summary stay in one folder; any other run gets `new_dir`."""
    if ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).parent.parent)
    return new_dir


def compose_train(overrides: Iterable[str] = (), hydra_config: bool = False) -> DictConfig:
    """The train config with these command-line overrides, composed outside a run (resolvers registered).

    With `hydra_config`, the config keeps its `hydra` node, which is also made the current HydraConfig, so that
    `${hydra:...}` values resolve as in a run.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=hydra_config)
    if hydra_config:
        HydraConfig.instance().set_config(cfg)
    return cfg


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def check_cli_choices(argv: list[str]) -> None:
    """Reject an unknown config-group option (e.g. attention=foo, also inside a multirun list) in one line."""
    for arg in argv:
        match = re.fullmatch(r"([a-z_]+)=(.+)", arg)
        if not match or match.group(1) not in GROUPS:
            continue
        group, value = match.groups()
        for choice in re.split(r"\s*,\s*", value):
            if choice not in group_choices(group) and choice != "null":
                raise ConfigError(
                    f"{group}={choice} is not a known {group}; choose one of: "
                    f"{', '.join(group_choices(group))}"
                )


def check_cli_keys(argv: list[str]) -> None:
    """Reject a misspelt key (e.g. trainer.max_step=5) in one line naming the closest valid key.

    Hydra's own message for it is several lines ending in "Key 'max_step' is not in struct". The keys are checked
    against the config composed with the command line's group options (the first option of a sweep list).
    """
    keys = [m.group(1) for a in argv if (m := re.fullmatch(r"([A-Za-z_][\w.]*)=.*", a))]
    keys = [k for k in keys if k not in GROUPS and not k.startswith("hydra.")]
    if not keys:
        return
    choices = [f"{k}={v.split(',')[0]}" for a in argv if (m := re.fullmatch(r"([a-z_]+)=(.+)", a))
               for k, v in [m.groups()] if k in GROUPS]
    cfg = compose_train(choices)
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        names = [str(k) for k in node] if isinstance(node, DictConfig) else []  # with ??? ones, which `in` skips
        if isinstance(node, DictConfig) and leaf not in names:
            close = difflib.get_close_matches(leaf, names, n=1)
            hint = f"did you mean {'.'.join(filter(None, (parent, close[0])))}?" if close else "no such key"
            raise ConfigError(f"{key} is not a config key: {hint} (+{key}=... adds a new key)")


def compile_mode(cfg: DictConfig, cuda: bool) -> str | None:
    """The torch.compile mode training runs in: cfg.compile_mode when `compile` is on (auto: on CUDA only), else
    None (eager). train.py and the plain-loop benchmark decide it here, so both train alike."""
    return cfg.compile_mode if (cuda if cfg.compile == "auto" else cfg.compile) else None


def validate(cfg: DictConfig) -> None:
    """Check the values that would otherwise fail deep inside training, before any work starts.

    The model's, the data's and the tokenizer's own values are checked by their constructors (train.py builds them
    before any work, and a constructor's ValueError is the one-line error); `rank` is checked here because most
    attention variants never see it."""
    numbers = (("seed", int), ("rank", float), ("optimizer.lr", float), ("trainer.max_steps", int),
               ("judge.samples", int), ("judge.temperature", float))
    for key, kind in numbers:
        _check_number(cfg, key, kind)
    # switches read as truth values: "maybe" would be true
    for key in ("compile_validation", "async_checkpoints", "fused_loss"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]} is not true or false")
    if not 0 < cfg.rank <= 1:
        raise ConfigError(f"rank={cfg.rank} is outside (0, 1]; the latent dim is rank x d_model")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not a file; give a checkpoint such as <run>/checkpoints/last.ckpt"
        )
    if not isinstance(cfg.data.batch_size, int) or cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be a whole number of sequences, at least 1")
    if cfg.data.seq_len > cfg.model.block_size:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} is longer than the context "
            f"model.block_size={cfg.model.block_size}; use data.seq_len <= {cfg.model.block_size}"
        )
    if OmegaConf.is_missing(cfg.data, "files"):
        raise ConfigError("data.files is required with data=text: give files or globs, e.g. data.files='my/*.txt'")

def _check_number(cfg: DictConfig, key: str, kind: type) -> None:
    """`key` holds a number of `kind` (an int also passes as a float)."""
    value = OmegaConf.select(cfg, key)
    allowed = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ConfigError(f"{key}={value} is not {'a number' if kind is float else 'an integer'}")


def fail(err: Exception) -> None:
    """Print a config error as one line and exit with status 2."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
