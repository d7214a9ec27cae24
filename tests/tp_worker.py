"""The body of one gloo process of tests/test_tensor_parallel.py, in a module of its own so that a spawned
process imports torch and latentlm.model only (not pytest, Hydra or the other tests)."""

import torch
import torch.distributed as dist

from latentlm.model import GPT
from latentlm.model.tensor_parallel import greedy_decode, shard_model


def decode_every_variant(
    rank: int, world_size: int, port: int, attentions: dict[str, dict], sizes: dict[str, int]
) -> None:
    """For each attention config: the single-process greedy decode, then the sharded one on this rank; the same
    tokens, logits to 1e-12, and this rank's real cache holds kv_cache_elements_per_device(world_size) a token."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    B, prompt_len, steps, layers = sizes["batch"], sizes["prompt"], sizes["steps"], sizes["layers"]
    try:
        for name, attention in attentions.items():
            torch.manual_seed(0)  # the same weights and prompt on every rank
            model = GPT(sizes["vocab"], sizes["d_model"], layers, sizes["n_head"], sizes["ctx"], attention)
            model = model.double().eval()
            prompt = torch.randint(0, sizes["vocab"], (B, prompt_len))
            tokens, logits = greedy_decode(model, prompt, steps)
            sharded = shard_model(model, rank, world_size)
            caches = sharded.new_caches(B, prompt_len + steps, dtype=torch.float64)
            tp_tokens, tp_logits = greedy_decode(sharded, prompt, steps, caches)
            assert torch.equal(tp_tokens, tokens), f"{name} at TP-{world_size}, rank {rank}: other tokens"
            error = ((tp_logits - logits).norm() / logits.norm()).item()
            assert error < 1e-12, f"{name} at TP-{world_size}, rank {rank}: relative error {error}"
            held = sum(t.untyped_storage().nbytes() for cache in caches for t in cache.tensors.values())
            per_device = model.blocks[0].attn.kv_cache_elements_per_device(world_size)
            assert held == layers * B * (prompt_len + steps) * per_device * 8, name  # fp64: 8 bytes an element
    finally:
        dist.destroy_process_group()
