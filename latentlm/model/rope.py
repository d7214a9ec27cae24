"""Rotary position embedding (Su et al. 2021, RoFormer), rotate-half layout as in GPT-NeoX and Llama."""

import torch
from torch import Tensor, nn


class Rotary(nn.Module):
    """Rotates the last dim of (B, T, H, dim) tensors by angles that depend on absolute position."""

    def __init__(self, dim: int, max_seq_len: int, base: float = 10_000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim must be even, got {dim}")
        self.base = base  # rope_theta in an exported config (latentlm.export)
        inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (T, dim/2)
        # Not persistent: derived from (dim, max_seq_len, base), so checkpoints stay free of it.
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, start_pos: int = 0) -> Tensor:
        T = x.size(1)
        cos = self.cos[start_pos : start_pos + T, None, :]  # (T, 1, dim/2), broadcast over heads
        sin = self.sin[start_pos : start_pos + T, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)
