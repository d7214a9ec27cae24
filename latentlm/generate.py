"""KV-cached text generation from a training checkpoint.

    python -m latentlm.generate ckpt=logs/train/runs/<run>/checkpoints/best.ckpt prompt="Once upon a time"

A checkpoint holds its model's config and its tokenizer, so it rebuilds its own model wherever it is copied to.
Generation prefills the prompts, then decodes one token a step through each attention variant's own cache;
temperature=0 is greedy and deterministic. An empty prompt (prompt='') starts from <|endoftext|>, which precedes
every document in training, so it samples whole documents.
"""

import logging
import sys
from pathlib import Path

import hydra
import tiktoken
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from latentlm.config import CONFIG_DIR, ConfigError, fail
from latentlm.data.tokenizer import run_tokenizer, tokenizer_encoding
from latentlm.lit import LitGPT
from latentlm.model import GPT

log = logging.getLogger(__name__)


def load_checkpoint(
    ckpt: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[GPT, tiktoken.Encoding]:
    """The model (eval mode, on `device`, in `dtype`) and tokenizer of a checkpoint written by latentlm.train, from
    the checkpoint alone (LitGPT saves both in it), or for an older checkpoint from its run dir."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ConfigError(f"ckpt={ckpt} is not a file; pass a .ckpt from a run's checkpoints/ folder")
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    if "hyper_parameters" in checkpoint:
        hparams = dict(checkpoint["hyper_parameters"])
        if "warmup_steps" in hparams:  # saved before the schedule was a config: generation does not use it
            hparams["scheduler"] = {key: hparams.pop(key) for key in ("warmup_steps", "min_lr_ratio")}
        module = LitGPT(**hparams)
    else:
        module = _from_run_dir(ckpt)
    if module.hparams.tokenizer is None:
        raise ConfigError(f"ckpt={ckpt} has no tokenizer to write text with: its run trained on random tokens")
    module.load_state_dict(checkpoint["state_dict"])
    return module.net.to(device=device, dtype=dtype).eval(), tokenizer_encoding(module.hparams.tokenizer)


def _from_run_dir(ckpt: Path) -> LitGPT:
    """The module of a checkpoint written before LitGPT saved its config and tokenizer, from the config.yaml and
    tokenizer files of its run dir (the folder above its checkpoints/ folder)."""
    run_dir = ckpt.resolve().parent.parent
    tokenizer = run_tokenizer(run_dir)
    if tokenizer is None or not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"ckpt={ckpt} holds no model config and tokenizer (it predates checkpoints that keep them), and its "
            f"run dir {run_dir} has no config.yaml and tokenizer.json either; load it from its run's checkpoints/"
        )
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    return LitGPT(cfg["model"], tokenizer["vocab_size"], cfg["optimizer"], cfg["scheduler"], cfg["label_smoothing"],
                  tokenizer)


def sample_next(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> Tensor:
    """One token per row of logits (B, V): greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model: GPT, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eot: int | None = None,
             seed: int | None = None, compile_step: bool = False) -> list[list[int]]:
    """Continue each prompt by up to max_new_tokens tokens (fewer if it emits `eot`).

    Prompts of different lengths share one cache: all are prefilled to the shortest length, and each
    longer prompt is then fed its own next token (not a sample) until it runs out. `compile_step` runs the
    decode step through torch.compile (one compilation with symbolic batch and position, then fused kernels).
    """
    if not prompts or min(map(len, prompts)) == 0:
        raise ValueError("every prompt needs at least one token")
    longest = max(map(len, prompts))
    if longest >= model.block_size:
        raise ValueError(
            f"a prompt of {longest} tokens does not fit the context block_size={model.block_size}; shorten it"
        )
    total = min(model.block_size, longest + max_new_tokens)
    if total < longest + max_new_tokens:
        log.warning("max_new_tokens cut to %d: the context holds %d tokens", total - longest, model.block_size)
    device = next(model.parameters()).device
    B, shortest = len(prompts), min(map(len, prompts))
    tokens = torch.zeros(B, total, dtype=torch.long, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    caches = model.new_caches(B, total, device, next(model.parameters()).dtype)
    logits = model(tokens[:, :shortest], caches, 0, last_only=True)[:, -1, : model.vocab_size]
    step = torch.compile(model, dynamic=True) if compile_step else model
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for pos in range(shortest, total):
        sampled = sample_next(logits, temperature, top_k, top_p, generator)
        in_prompt = pos < lengths
        tokens[:, pos] = torch.where(in_prompt, tokens[:, pos], sampled)
        if eot is not None:
            finished |= ~in_prompt & (sampled == eot)
            if pos % 32 == 0 and bool(finished.all()):  # a host sync, so only every 32 steps
                break
        if pos + 1 < total:
            logits = step(tokens[:, pos : pos + 1], caches, pos)[:, -1, : model.vocab_size]
    out = []
    for i, p in enumerate(prompts):
        new = tokens[i, len(p) : len(p) + max_new_tokens].tolist()
        out.append(new[: new.index(eot) + 1] if eot is not None and eot in new else new)
    return out


def _dtype(name: str, device: str) -> torch.dtype:
    """bf16 on a GPU for `auto` (the models train in bf16-mixed; the latent decode kernel wants 16-bit), else fp32."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in allowed:
        raise ConfigError(f"dtype={name} is not one of auto, {', '.join(allowed)}")
    return allowed[name]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="generate")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "ckpt"):
            raise ConfigError("ckpt is not set; pass ckpt=<run dir>/checkpoints/best.ckpt of a latentlm.train run")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        model, enc = load_checkpoint(cfg.ckpt, device, _dtype(cfg.dtype, device))
        prompts = list(cfg.prompts) if cfg.prompts else [cfg.prompt]
        ids = [enc.encode_ordinary(p) or [enc.eot_token] for p in prompts]
        try:
            outs = generate(model, ids, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                            eot=enc.eot_token, seed=cfg.seed, compile_step=bool(cfg.compile))
        except ValueError as err:  # a prompt longer than the context: generate checks it
            raise ConfigError(str(err)) from None
    except ConfigError as err:
        fail(err)
    for prompt, out in zip(prompts, outs, strict=True):
        sys.stdout.write(prompt + enc.decode([t for t in out if t != enc.eot_token]) + "\n" + cfg.separator + "\n")


if __name__ == "__main__":
    _hydra_main()
