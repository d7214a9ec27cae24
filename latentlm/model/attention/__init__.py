"""Attention variants behind one interface (`Attention`) and one registry (`ATTENTION`).

Importing this package registers every variant; a new variant is one module with a `@register` class.
"""

from latentlm.model.attention import gqa, latent  # noqa: F401  (registers the variants)
from latentlm.model.attention.base import Attention, KVCache, causal_attention
from latentlm.model.attention.registry import ATTENTION, build_attention, register

__all__ = ["ATTENTION", "Attention", "KVCache", "build_attention", "causal_attention", "register"]
