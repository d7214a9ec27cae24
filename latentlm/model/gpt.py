"""A pre-norm decoder whose attention layer is chosen by config (see latentlm.model.attention).

Two block families, chosen by `block`: "gpt2" (LayerNorm with bias, GELU MLP) and "llama" (RMSNorm, SwiGLU MLP).
Neither has biases in its linear layers. They map onto different Hugging Face classes (latentlm.export).
"""

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.model.attention import Attention, KVCache, build_attention


class MLP(nn.Module):
    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model, bias=False)
        self.proj = nn.Linear(4 * d_model, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class SwiGLU(nn.Module):
    """proj(silu(gate(x)) * fc(x)) (Shazeer 2020), as Llama's MLP."""

    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        # Three matrices of 8d/3 hold as many weights as GPT-2's two of 4d; rounded up to a multiple of 64.
        hidden = 64 * math.ceil(8 * d_model / 3 / 64)
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.fc = nn.Linear(d_model, hidden, bias=False)
        self.proj = nn.Linear(hidden, d_model, bias=False)  # named as MLP's, so GPT scales its init the same way
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.silu(self.gate(x)) * self.fc(x)))


# block family -> (norm, MLP). RMSNorm's eps is Llama's and DeepSeek's 1e-6: its default (None) would be the
# dtype's machine epsilon, which no exported model reproduces.
BLOCKS = {"gpt2": (nn.LayerNorm, MLP), "llama": (partial(nn.RMSNorm, eps=1e-6), SwiGLU)}


class Block(nn.Module):
    def __init__(self, d_model: int, attn: Attention, dropout: float, block: str = "gpt2"):
        super().__init__()
        norm, mlp = BLOCKS[block]
        self.ln_1 = norm(d_model)
        self.attn = attn
        self.ln_2 = norm(d_model)
        self.mlp = mlp(d_model, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x), cache, start_pos))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token embedding tied to the LM head, vocab padded to a multiple of 64 for fast matmuls.

    `block` is the block family, "gpt2" or "llama" (BLOCKS). `attention` is the attention config: `name` (a label),
    `twin` (the baseline it is compared with; bookkeeping, ignored here), `_target_` (the Attention class), `pos_emb`
    ("learned" adds GPT-2's absolute position embedding; "none" leaves positions to the attention, e.g. RoPE), and
    the variant's own keyword arguments.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layer: int,
        n_head: int,
        block_size: int,
        attention: dict[str, Any],
        dropout: float = 0.0,
        vocab_multiple: int = 64,
        block: str = "gpt2",
    ):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"model.block={block!r} is unknown; choose one of: {', '.join(BLOCKS)}")
        self.block = block
        attention = dict(attention)
        self.attention_name = attention.pop("name", attention["_target_"])
        attention.pop("twin", None)
        pos_emb = attention.pop("pos_emb", "none")
        if pos_emb not in ("learned", "none"):
            raise ValueError(f"attention.pos_emb={pos_emb!r} must be 'learned' or 'none'")
        self.vocab_size = vocab_size
        self.padded_vocab_size = math.ceil(vocab_size / vocab_multiple) * vocab_multiple
        self.block_size = block_size
        self.wte = nn.Embedding(self.padded_vocab_size, d_model)
        self.wpe = nn.Embedding(block_size, d_model) if pos_emb == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                d_model,
                build_attention(
                    d_model=d_model, n_head=n_head, max_seq_len=block_size, dropout=dropout, **attention
                ),
                dropout,
                block,
            )
            for _ in range(n_layer)
        )
        self.ln_f = BLOCKS[block][0](d_model)
        self.lm_head = nn.Linear(d_model, self.padded_vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith(("attn.wo.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; non_embedding leaves out the token and position embeddings (the head is tied)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n

    def kv_cache_elements(self) -> int:
        """Cached elements per token, summed over layers."""
        return sum(block.attn.kv_cache_elements() for block in self.blocks)

    def new_caches(self, batch_size: int, max_len: int, device=None, dtype=None) -> list[KVCache]:
        return [block.attn.new_cache(batch_size, max_len, device, dtype) for block in self.blocks]

    def forward(
        self, idx: Tensor, caches: list[KVCache] | None = None, start_pos: int = 0, last_only: bool = False
    ) -> Tensor:
        """Logits (B, T, padded_vocab) for tokens idx (B, T) at positions start_pos.. (caches: one per layer).

        last_only gives the last position's logits alone, (B, 1, padded_vocab): all a prefill needs to sample from.
        """
        return self.lm_head(self.hidden(idx, caches, start_pos, last_only))

    def hidden(
        self, idx: Tensor, caches: list[KVCache] | None = None, start_pos: int = 0, last_only: bool = False
    ) -> Tensor:
        """The final hidden states (B, T, d_model), ln_f's output: what lm_head turns into logits.

        A fused loss (latentlm.lit) takes these and the head's weight, so the logits are never held whole.
        """
        T = idx.size(1)
        if start_pos + T > self.block_size:
            raise ValueError(
                f"sequence of {start_pos + T} tokens is longer than the context block_size={self.block_size}"
            )
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start_pos, start_pos + T, device=idx.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches is not None else None, start_pos)
        return self.ln_f(x[:, -1:] if last_only else x)
