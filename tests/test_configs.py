"""Every option of every config group composes, and what it configures instantiates; an installed latentlm carries
its configs."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from latentlm.config import GROUPS, compose_train, group_choices
from latentlm.model import GPT

OPTIONS = [(g, o) for g in GROUPS for o in group_choices(g)]


def compose_cfg(*overrides: str, tmp_path):
    cfg = compose_train([f"paths.root_dir={tmp_path}", *overrides], hydra_config=True)  # ${hydra:...} resolves
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        del cfg.hydra  # as in a task function, which never sees the hydra node
    return cfg


def test_every_group_has_options():
    for group in GROUPS:
        assert group_choices(group), group


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_option_composes_and_instantiates(group, option, tmp_path):
    extra = ["data.files=README.md"] if (group, option) == ("data", "text") else []
    cfg = compose_cfg(f"{group}={option}", *extra, tmp_path=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    with torch.device("meta"):
        net = instantiate(cfg.model, vocab_size=500, _convert_="all")
    assert isinstance(net, GPT) and net.attention_name == cfg.attention.name
    datamodule = instantiate(cfg.data, _convert_="all")
    assert datamodule.seq_len == cfg.data.seq_len
    optimizer = instantiate(cfg.optimizer)(torch.nn.Linear(2, 2).parameters())
    assert isinstance(optimizer, torch.optim.AdamW)
    for callback in cfg.callbacks.values():
        instantiate(callback)
    for logger in cfg.get("logger", {}).values():
        instantiate(logger)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = "32-true"
    if trainer_cfg["strategy"] == "fsdp" and not torch.cuda.is_available():
        return  # FSDP is for CUDA GPUs (on a CPU, train.py stops it in one line: test_runs.py)
    instantiate(trainer_cfg, logger=False, enable_progress_bar=False)


def test_rank_reaches_latent_attention(tmp_path):
    cfg = compose_cfg("attention=mla_rope", "rank=0.25", "model=30m", tmp_path=tmp_path)
    with torch.device("meta"):
        net = instantiate(cfg.model, vocab_size=4096, _convert_="all")
    assert net.blocks[0].attn.latent_dim == 128 and net.kv_cache_elements() == 8 * (128 + 32)


def test_model_30m_is_about_30m_parameters(tmp_path):
    cfg = compose_cfg("model=30m", tmp_path=tmp_path)
    with torch.device("meta"):
        net = instantiate(cfg.model, vocab_size=4096, _convert_="all")
    assert 25e6 < net.num_params() < 35e6


def test_installed_package_carries_its_configs(tmp_path):
    """`pip install .` (not editable) ships configs/ inside the package: the train CLI composes from any directory,
    and every module and config file of the checkout is installed (pyproject.toml lists the packages)."""
    src, site, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    for name in ("latentlm", "configs"):  # a copy, as the build writes build/ and *.egg-info beside the sources
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile"]
    subprocess.run([*pip, "--target", str(site), str(src)], check=True, capture_output=True, timeout=120)
    installed = {p.relative_to(site / "latentlm") for p in (site / "latentlm").rglob("*.*") if p.suffix != ".pyc"}
    checkout = {p.relative_to(REPO / "latentlm") for p in (REPO / "latentlm").rglob("*.py")}
    checkout |= {p.relative_to(REPO / "latentlm") for p in (REPO / "latentlm").rglob("*.txt")}  # the story words
    checkout |= {"configs" / p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml")}
    assert installed == checkout, sorted(map(str, installed ^ checkout))
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy, not the checkout
    proc = subprocess.run(
        [sys.executable, "-m", "latentlm.train", "--cfg", "job", "attention=mla_rope"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: mla_rope" in proc.stdout
    where = subprocess.run(
        [sys.executable, "-c", "from latentlm.config import CONFIG_DIR; print(CONFIG_DIR)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )
    assert where.stdout.strip() == str(site / "latentlm" / "configs")
