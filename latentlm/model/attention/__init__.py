"""Attention variants behind one interface (`Attention`), built from config by `build_attention`.

An attention config names its class with `_target_` (configs/attention/*.yaml), so a new variant is one module
with an `Attention` subclass and one YAML file whose `_target_` is that class. A latent variant (one with a latent
rank) has a `rank` key in its config; the rest of latentlm tells variants apart by that key alone.
"""

import importlib
from typing import Any

from latentlm.model.attention.base import Attention, KVCache, causal_attention


def attention_class(target: str) -> type[Attention]:
    """The `Attention` subclass a dotted `_target_` names (module.Class)."""
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"attention._target_={target} names no class; give module.Class") from None
    if not (isinstance(cls, type) and issubclass(cls, Attention)):
        raise ValueError(f"attention._target_={target} is not an Attention class")
    return cls


def build_attention(_target_: str, **kwargs: Any) -> Attention:
    """The attention layer of class `_target_` with its keyword arguments."""
    return attention_class(_target_)(**kwargs)


__all__ = ["Attention", "KVCache", "attention_class", "build_attention", "causal_attention"]
