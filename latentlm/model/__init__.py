from latentlm.model.attention import ATTENTION, Attention, KVCache, build_attention
from latentlm.model.gpt import GPT

__all__ = ["ATTENTION", "GPT", "Attention", "KVCache", "build_attention"]
