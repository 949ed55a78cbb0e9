r"""A tiny decoder-only transformer (GPT), pre-norm, written out in a few readable lines.

Each block is ``x + attention(layernorm(x))`` then ``x + mlp(layernorm(x))`` (pre-norm,
as GPT-2 and nanoGPT), with causal multi-head self-attention and a 4x-wide GELU MLP;
learned position embeddings; a final LayerNorm and a linear head to next-token logits.
Weights start Gaussian with standard deviation 0.02 (biases zero, LayerNorm gains one),
so the logits start near zero and the loss at initialisation is about
:math:`\ln V` for a vocabulary of size :math:`V` (a uniform guess).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clipping_lib._checks import check_int

__all__ = ["GPT", "GPTConfig"]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context: int = 64
    width: int = 64
    layers: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "width", "layers", "heads"):
            check_int(getattr(self, name), name, 1)
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)
        mask = torch.ones(config.context, config.context, dtype=torch.bool).tril()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        scores = scores.masked_fill(~self.mask[:T, :T], float("-inf"))
        y = scores.softmax(dim=-1) @ v  # (B, heads, T, C / heads)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, 4 * config.width),
            nn.GELU(),
            nn.Linear(4 * config.width, config.width),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Next-character logits ``(B, T, V)`` from character ids ``(B, T)``."""

    def __init__(self, config: GPTConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.width)
        self.position = nn.Embedding(config.context, config.width)
        self.blocks = nn.Sequential(*(Block(config) for _ in range(config.layers)))
        self.ln_f = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif "ln" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)

    def forward(self, ids: Tensor) -> Tensor:
        T = ids.shape[-1]
        if T > self.config.context:
            raise ValueError(f"sequence length {T} exceeds the context {self.config.context}")
        x = self.token(ids) + self.position(torch.arange(T, device=ids.device))
        return self.head(self.ln_f(self.blocks(x)))

    def loss(self, ids: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy of the next character, ``"mean"`` or ``"sum"`` over tokens."""
        logits = self(ids)
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction)
