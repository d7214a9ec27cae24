"""Print the KV-cache, parameter and FLOP table of docs/attention.md from the real modules (model=30m by default).

    python scripts/attention_table.py [--model 30m] [--ranks 0.5,0.25]

Training FLOPs per token (forward + backward, the whole model at its context) are counted on a meta-device copy by
latentlm.callbacks.train_flops_per_token, as the training runs count them for MFU; "vs mha_rope" is the ceiling on
a variant's training speed relative to mha_rope at equal FLOP rate.
"""

import argparse
from functools import partial

import torch
from hydra.utils import instantiate

from latentlm.callbacks import train_flops_per_token
from latentlm.config import compose_train, group_choices
from latentlm.model.attention.gqa import GroupedQueryAttention
from latentlm.model.attention.gta import GroupedTiedAttention


def build(model: str, attention: str, rank: float):
    cfg = compose_train([f"model={model}", f"attention={attention}", f"rank={rank}"])
    with torch.device("meta"):
        return instantiate(cfg.model, vocab_size=4096, _convert_="all")


def flops(model: str, attention: str, rank: float) -> float:
    """Training FLOPs per token of the whole model at its context."""
    net = build(model, attention, rank)
    return train_flops_per_token(partial(build, model, attention, rank), net.block_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="30m")
    parser.add_argument("--ranks", default="0.5,0.25")
    args = parser.parse_args()
    ranks = [float(r) for r in args.ranks.split(",")]
    mha = build(args.model, "mha", 0.5)
    per_layer_mha = mha.blocks[0].attn.kv_cache_elements()
    flops_mha_rope = flops(args.model, "mha_rope", 0.5)
    print("| variant | rank | cached per token per layer | elements | bf16 bytes/token (all layers) | vs MHA | "
          "attention params/layer | total params | training GFLOP/token | vs mha_rope |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in group_choices("attention"):
        for rank in ranks:
            net = build(args.model, name, rank)
            attn = net.blocks[0].attn
            latent = hasattr(attn, "latent_dim")
            if not latent and rank != ranks[0]:
                continue  # rank does not change non-latent variants
            if isinstance(attn, GroupedQueryAttention):
                what = f"K and V of each KV head ({attn.n_kv_heads} x 2 x {attn.head_dim})"
            elif isinstance(attn, GroupedTiedAttention):
                what = f"tied states u ({attn.n_kv_heads} x {attn.head_dim}) + rotary key {attn.rope_dim}, one row"
            elif not latent:  # GTA, MFA, TPA: the cached tensors by name and per-token shape
                what = " + ".join(f"{k} {' x '.join(map(str, shape))}" for k, shape in attn.cache_shapes().items())
            else:
                r = attn.latent_dim
                latents = f"latent {r}" if attn.kv_latent == "joint" else f"c_k {r} + c_v {r}"
                what = f"{latents} + rotary key {attn.rope_dim}"
                if attn.n_groups > 1:
                    what += f" ({attn.n_branches} x {attn.n_groups} blocks of {attn.block_dim}, branches x groups)"
                elif attn.n_branches > 1:
                    what += f" ({attn.n_branches} blocks of {attn.block_dim})"
            elements = attn.kv_cache_elements()
            train_flops = flops(args.model, name, rank)
            print(f"| {name} | {rank if latent else '-'} | {what} | {elements} | {2 * net.kv_cache_elements():,} | "
                  f"{elements / per_layer_mha - 1:+.1%} | {sum(p.numel() for p in attn.parameters()):,} | "
                  f"{net.num_params():,} | {train_flops / 1e9:.3f} | {train_flops / flops_mha_rope:.2f}x |")


if __name__ == "__main__":
    main()
