"""Print the KV-cache and parameter table of docs/attention.md from the real modules (model=30m by default).

    python scripts/attention_table.py [--model 30m] [--ranks 0.5,0.25]
"""

import argparse

import torch
from hydra.utils import instantiate

from latentlm.config import compose_train, group_choices
from latentlm.model.attention.gqa import GroupedQueryAttention


def build(model: str, attention: str, rank: float):
    cfg = compose_train([f"model={model}", f"attention={attention}", f"rank={rank}"])
    with torch.device("meta"):
        return instantiate(cfg.model, vocab_size=4096, _convert_="all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="30m")
    parser.add_argument("--ranks", default="0.5,0.25")
    args = parser.parse_args()
    ranks = [float(r) for r in args.ranks.split(",")]
    mha = build(args.model, "mha", 0.5)
    per_layer_mha = mha.blocks[0].attn.kv_cache_elements()
    print("| variant | rank | cached per token per layer | elements | bf16 bytes/token (all layers) | vs MHA | "
          "attention params/layer | total params |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in group_choices("attention"):
        for rank in ranks:
            net = build(args.model, name, rank)
            attn = net.blocks[0].attn
            latent = hasattr(attn, "latent_dim")
            if not latent and rank != ranks[0]:
                continue  # rank does not change non-latent variants
            if isinstance(attn, GroupedQueryAttention):
                what = f"K and V of each KV head ({attn.n_kv_heads} x 2 x {attn.head_dim})"
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
            print(f"| {name} | {rank if latent else '-'} | {what} | {elements} | {2 * net.kv_cache_elements():,} | "
                  f"{elements / per_layer_mha - 1:+.1%} | {sum(p.numel() for p in attn.parameters()):,} | "
                  f"{net.num_params():,} |")


if __name__ == "__main__":
    main()
