from latentlm.model.attention import Attention, KVCache, build_attention
from latentlm.model.gpt import GPT

__all__ = ["GPT", "Attention", "KVCache", "build_attention"]
