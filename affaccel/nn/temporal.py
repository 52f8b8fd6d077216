"""The temporal model of stage 3: features [B, w, D] -> TCN -> Transformer -> MLP -> [B, w, K].

Paper sec. 3.2: a TCN of dilated causal convolutions captures local dynamics, a Transformer
encoder relates frames across the whole window, an MLP head maps each frame to the task's
outputs (2 VA values bounded by tanh, 8 EXPR logits or 12 AU logits). Dropout 0.3 is the
paper's; widths and depths are ours (the paper does not give them) and live in the config.
``use_tcn`` / ``use_transformer`` switch either part off for the paper's ablation (Table 2).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from affaccel.config import TemporalConfig
from affaccel.tasks import get_task


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine positions (Vaswani et al. 2017): [length, dim]."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class TemporalModel(nn.Module):
    """x: [B, w, D] features, mask: [B, w] bool (True = real frame) -> [B, w, K].

    Padded positions (mask False) are excluded from attention as keys; their outputs are
    meaningless and must be masked by the caller (the losses and overlap averaging do).
    The TCN is causal, and windows are padded at the end, so padding never reaches a real frame
    through the convolutions either.
    """

    def __init__(self, cfg: TemporalConfig):
        super().__init__()
        self.cfg = cfg.validate()
        width = cfg.width
        if cfg.use_tcn:
            from affaccel.nn.tcn import (
                TCN,  # fused Triton path on GPU, reference on CPU
            )

            self.front = TCN(cfg.in_dim, [int(c) for c in cfg.tcn_channels], kernel_size=cfg.tcn_kernel,
                             dropout=cfg.dropout)
        else:
            self.front = nn.Sequential(nn.Linear(cfg.in_dim, width), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.encoder = None
        if cfg.use_transformer:
            if cfg.positional == "learned":
                self.pos = nn.Parameter(torch.zeros(cfg.max_len, width))
                nn.init.normal_(self.pos, std=0.02)
            else:
                self.register_buffer("pos", sinusoidal_encoding(cfg.max_len, width), persistent=False)
            layer = nn.TransformerEncoderLayer(width, cfg.transformer_heads, cfg.transformer_ff,
                                               dropout=cfg.dropout, batch_first=True, norm_first=True)
            # norm_first layers are not eligible for the nested-tensor fast path; say so up front
            self.encoder = nn.TransformerEncoder(layer, cfg.transformer_layers, norm=nn.LayerNorm(width),
                                                 enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(width, cfg.head_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.head_hidden, get_task(cfg.task).dim))
        self.bounded = get_task(cfg.task).name == "va"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.cfg.in_dim:
            raise ValueError(f"TemporalModel expects features [B, w, {self.cfg.in_dim}], got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mask must be [B, w] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        h = self.front(x)                                   # [B, w, width]
        if self.encoder is not None:
            w = h.shape[1]
            if w > self.pos.shape[0]:
                if self.cfg.positional == "learned":
                    raise ValueError(f"window of {w} frames exceeds max_len={self.cfg.max_len}")
                pos = sinusoidal_encoding(w, h.shape[-1]).to(h.device)
            else:
                pos = self.pos[:w]
            h = h + pos.to(h.dtype)
            pad = None if mask is None else ~mask.bool()
            h = self.encoder(h, src_key_padding_mask=pad)
        y = self.head(h)                                    # [B, w, K]
        return torch.tanh(y) if self.bounded else y

    def to_prediction(self, y: torch.Tensor) -> torch.Tensor:
        """Model outputs -> the space predictions are averaged and scored in: VA values,
        EXPR class probabilities (softmax), AU probabilities (sigmoid)."""
        kind = get_task(self.cfg.task).kind
        if kind == "multiclass":
            return torch.softmax(y.float(), dim=-1)
        if kind == "multilabel":
            return torch.sigmoid(y.float())
        return y.float()
