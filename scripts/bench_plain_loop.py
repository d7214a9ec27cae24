"""Training steps timed in a plain PyTorch loop, without the Trainer: nanoGPT's model (the reference of issue 18)
or our own LitGPT, at the shape of our training benchmark.

    python scripts/bench_plain_loop.py --nanogpt PATH [--experiment bench_train] [--out DIR] [overrides ...]
    python scripts/bench_plain_loop.py --ours [--experiment bench_train] [--out DIR] [attention=mha ...]

The shape is read from the composed training config (the experiment and the overrides our runs get), so the loops
and the Trainer runs cannot drift apart: d_model, n_layer, n_head, context, batch, the warm-up steps and the timed
steps (trainer.max_steps - callbacks.throughput.warmup_steps). Both loops train on one batch of random tokens
already on the device, drawn below the unpadded vocab as our data's, and are timed between two synchronisations
with none inside the steps (the best case: our Throughput callback does not sync either).

--nanogpt PATH: a checkout of karpathy/nanoGPT kept outside this repository (none of its code is committed here);
its model.py is imported by file path. The vocab is our GPT's padded vocab (4096 for bench_train: already a
multiple of 64). The recipe is nanoGPT's bench.py: bf16 autocast and torch.compile (its default mode) on CUDA, fused
AdamW from its configure_optimizers, dropout 0, bias=False (bench.py's setting, and the nearest to ours: no biases
in our linear layers). bench.py reads the loss (a host sync) every step; here it does not.

--ours: our LitGPT exactly as the Trainer runs it (the same compiled loss, bf16 autocast, fused AdamW over our
weight-decay groups, gradient clipping, the lr schedule), stepped by hand. Its tokens/s over the Trainer's at the
same shape is what Lightning's loop costs (callbacks, logging, the optimizer closure, host work between steps).

Without CUDA: fp32, eager. scripts/bench_train.py --nanogpt PATH / --plain-loop VARIANTS runs this in a process of
its own beside the Trainer runs; DIR gets summary.json.
"""

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from omegaconf import DictConfig

from latentlm.config import compile_mode


def load_nanogpt(path: Path) -> ModuleType:
    """PATH/model.py imported as the module `nanogpt_model`; a ValueError (one line) when it is not nanoGPT's."""
    model_py = path / "model.py"
    if not model_py.is_file():
        raise ValueError(f"--nanogpt {path}: no model.py there; give the path of a karpathy/nanoGPT checkout")
    spec = importlib.util.spec_from_file_location("nanogpt_model", model_py)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    missing = [name for name in ("GPT", "GPTConfig") if not hasattr(module, name)]
    if missing:
        raise ValueError(f"--nanogpt {path}: {model_py} has no {' or '.join(missing)}; is this nanoGPT's model.py?")
    return module


def checkout_id(path: Path) -> dict[str, str]:
    """The folder's name, its commit (when it is a git checkout of its own, not a folder inside another
    repository) and model.py's git blob id, which names the file in nanoGPT's history even without a checkout."""
    top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    commit = "unknown"
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() == path.resolve():
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
    data = (path / "model.py").read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # = git hash-object model.py
    return {"path": path.resolve().name, "commit": commit, "model_py_blob": blob}


def bench_shape(cfg: DictConfig) -> dict[str, Any]:
    """The run's shape and steps, as the composed training config gives them to our variants."""
    from hydra.utils import instantiate

    with torch.device("meta"):  # our GPT decides the padded vocab
        ours = instantiate(cfg.model, vocab_size=cfg.data.vocab_size, _convert_="all")
    warmup = cfg.callbacks.throughput.warmup_steps
    if cfg.trainer.max_steps <= warmup:
        raise ValueError(f"trainer.max_steps={cfg.trainer.max_steps} leaves no step after the {warmup} warm-up steps")
    return {
        "d_model": cfg.model.d_model, "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head,
        "seq_len": cfg.data.seq_len, "block_size": cfg.model.block_size, "vocab_size": cfg.data.vocab_size,
        "padded_vocab_size": ours.padded_vocab_size, "batch_size": cfg.data.batch_size,
        "warmup_steps": warmup, "timed_steps": cfg.trainer.max_steps - warmup,
    }


def time_steps(step: Callable[[], torch.Tensor], shape: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Run the warm-up steps (compilation, allocator), then time the timed steps between two synchronisations."""
    for _ in range(shape["warmup_steps"]):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    started = time.perf_counter()
    for _ in range(shape["timed_steps"]):
        loss = step()
    sync()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": shape["batch_size"] * shape["seq_len"] * shape["timed_steps"] / seconds,
            "ms_per_step": 1e3 * seconds / shape["timed_steps"], "loss_last": loss.item()}


def loop_summary(timed: dict[str, Any], flops_per_token: float, params: int, shape: dict[str, Any],
                 device: torch.device, compiled: bool) -> dict[str, Any]:
    """What both loops report, with the fields bench_train.py tabulates."""
    from latentlm.callbacks import peak_flops

    cuda = device.type == "cuda"
    precision = "bf16-mixed" if cuda else "32-true"
    peak = peak_flops(device, precision)
    return {
        "params": params, **timed, "flops_per_token": flops_per_token,
        "mfu": timed["tokens_per_s"] * flops_per_token / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "shape": shape, "precision": precision, "compiled": compiled, "fused_adamw": cuda,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "versions": {"torch": torch.__version__},
    }


def random_batch(shape: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Inputs and targets (2, batch, seq_len) below the unpadded vocab, on the device."""
    return torch.randint(shape["vocab_size"], (2, shape["batch_size"], shape["seq_len"]), device=device)


def time_nanogpt(nanogpt: ModuleType, cfg: DictConfig) -> dict[str, Any]:
    """Train nanoGPT's GPT with its recipe for the warm-up and the timed steps; its summary."""
    from lightning.fabric.utilities.throughput import measure_flops

    shape = bench_shape(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compile_model = compile_mode(cfg, device.type == "cuda") is not None  # in nanoGPT's own (default) mode
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as bench.py
    config = nanogpt.GPTConfig(
        block_size=shape["block_size"], vocab_size=shape["padded_vocab_size"], n_layer=shape["n_layer"],
        n_head=shape["n_head"], n_embd=shape["d_model"], dropout=0.0, bias=False,
    )
    with torch.device("meta"):
        meta = nanogpt.GPT(config)
        x = torch.zeros(1, shape["seq_len"], dtype=torch.long)
        flops_per_token = measure_flops(meta, lambda: meta(x, x)[1], lambda loss: loss) / shape["seq_len"]
    model = nanogpt.GPT(config).to(device)
    params = sum(p.numel() for p in model.parameters())  # the tied head counted once, as our num_params
    opt = cfg.optimizer
    optimizer = model.configure_optimizers(weight_decay=opt.weight_decay, learning_rate=opt.lr,
                                           betas=tuple(opt.betas), device_type=device.type)
    if compile_model:
        model = torch.compile(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    x, y = random_batch(shape, device)

    def step() -> torch.Tensor:
        with autocast:
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    timed = time_steps(step, shape, device)
    return {**loop_summary(timed, flops_per_token, params, shape, device, compile_model), "bias": False,
            "kv_elements_per_token": 2 * shape["n_layer"] * shape["d_model"]}  # K and V of every layer


def time_ours(cfg: DictConfig) -> dict[str, Any]:
    """Train our LitGPT as the Trainer would (train.py's compile and precision settings, the module's own optimizer,
    schedule and training loss, gradient clipping), stepped by hand; its summary."""
    from functools import partial

    from hydra.utils import instantiate

    from latentlm.callbacks import train_flops_per_token

    shape = bench_shape(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    mode = compile_mode(cfg, cuda)
    torch.manual_seed(cfg.seed)
    if cuda:
        torch.set_float32_matmul_precision("high")  # as train.py
    module = instantiate(cfg.module, vocab_size=shape["vocab_size"], compile_mode=mode,
                         compile_validation=False, _convert_="all").to(device)
    optimizer, schedule = module.optimizer_and_schedule(cfg.trainer.max_steps)
    clip = cfg.trainer.gradient_clip_val
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    x, y = random_batch(shape, device)

    def step() -> torch.Tensor:
        with autocast:
            loss = module._train_loss(x, y)  # what training_step computes, without its self.log
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.net.parameters(), clip, foreach=True)
        optimizer.step()
        schedule.step()
        return loss

    timed = time_steps(step, shape, device)
    flops_per_token = train_flops_per_token(
        partial(instantiate, cfg.model, vocab_size=shape["vocab_size"], _convert_="all"), shape["seq_len"])
    return {**loop_summary(timed, flops_per_token, module.net.num_params(), shape, device, mode is not None),
            "attention": cfg.attention.name, "kv_elements_per_token": module.net.kv_cache_elements()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--nanogpt", type=Path, metavar="PATH", help="a karpathy/nanoGPT checkout: time its model")
    which.add_argument("--ours", action="store_true", help="time our LitGPT (attention=... among the overrides)")
    parser.add_argument("--experiment", default="bench_train", help="the training config whose shape is timed")
    parser.add_argument("--out", type=Path, default=Path("."), help="the folder for summary.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as our runs get them")
    args = parser.parse_args()
    if args.nanogpt is not None:
        try:
            nanogpt = load_nanogpt(args.nanogpt)
        except ValueError as err:
            sys.exit(f"error: {err}")
    from latentlm.config import compose_train  # Lightning and Hydra take seconds to import: after the path check

    cfg = compose_train([f"experiment={args.experiment}", *args.overrides])
    if args.ours:
        summary = {"loop": "ours", "experiment": args.experiment, **time_ours(cfg)}
        name = f"{summary['attention']} (plain loop)"
    else:
        summary = {"loop": "nanogpt", "nanogpt": checkout_id(args.nanogpt), "experiment": args.experiment,
                   **time_nanogpt(nanogpt, cfg)}
        name = f"nanoGPT ({summary['nanogpt']['commit'][:12]})"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{name}: {summary['tokens_per_s']:,.0f} tokens/s, {summary['ms_per_step']:.1f} ms/step", flush=True)


if __name__ == "__main__":
    main()
