"""Temporal convolutional network of dilated causal convolutions on [B, T, C] activations.

The canonical temporal block (Bai, Kolter & Koltun 2018)::

    h   = dropout(act(causal_conv1(x)))                      # dilation d
    out = dropout(act(causal_conv2(h)))                      # dilation d
    y   = act(out + res),  res = x, or a 1x1 conv of x when the channel counts differ

with d = 2**i at level i. The parameters are ordinary ``nn.Conv1d`` modules (optionally
weight-normalised), so one state_dict serves the fused and the reference path.

Fused path (``affaccel.ops.causal_conv1d``): conv1 fuses bias + activation. conv2 also fuses the
residual add and the final activation, but only when dropout is inactive (eval mode or p = 0):
in training with p > 0 the dropout sits between the activation and the residual add, so conv2
fuses bias + activation and dropout, add and activation run as separate steps. Both orders are
exact; neither path drops anything the other keeps, and they draw dropout masks in the same
order, so the same seed gives the same result.

CPU inference path (``TCN.forward`` with ``fused=None`` where the reference would run, dropout
inactive): the whole stack runs channels-first, [B, C, T], with one transpose in and one out
(``TemporalBlock.forward_channels_first``: ``F.conv1d`` with its own padding, keeping the
first T outputs: the operations of the naive ``nn.Conv1d`` + chomp TCN, without the
reference's per-conv transposes, left-padded copies and contiguous copies). Chosen by
``affaccel.ops._dispatch.use_channels_first``; compared with ``forward_ref`` in
tests/nn/test_tcn.py. In training with dropout the channels-last reference runs, so the dropout
masks stay those of the fused path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from affaccel.ops._dispatch import use_channels_first
from affaccel.ops.causal_conv import (
    ACTIVATIONS,
    activation_ref,
    causal_conv1d,
    causal_conv1d_ref,
)


def _check_activation(activation):
    if activation not in ACTIVATIONS or activation is None:
        names = [a for a in ACTIVATIONS if a is not None]
        raise ValueError(f"activation must be one of {names}, got {activation!r}")


class TemporalBlock(nn.Module):
    """Two dilated causal convolutions with a residual connection. x: [B, T, C_in] -> [B, T, C_out].

    fused: None picks by device (CUDA -> Triton kernels, CPU -> reference), True forces the
    kernels, False forces the reference (``F.conv1d`` with left padding).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 dropout: float = 0.0, activation: str = "relu", weight_norm: bool = False,
                 fused: bool | None = None):
        super().__init__()
        _check_activation(activation)
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # padding is applied causally (left only) in forward, so the convs themselves pad nothing
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, dilation=dilation)
        if weight_norm:
            wn = torch.nn.utils.parametrizations.weight_norm
            self.conv1, self.conv2 = wn(self.conv1), wn(self.conv2)
        self.downsample = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.dropout = nn.Dropout(dropout)
        self.dilation = dilation
        self.activation = activation
        self.fused = fused

    def extra_repr(self) -> str:
        return f"dilation={self.dilation}, activation={self.activation!r}, fused={self.fused}"

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is None:
            return x
        # a 1x1 convolution on channels-last data is a matrix product
        return F.linear(x, self.downsample.weight.squeeze(-1), self.downsample.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, C_in] -> [B, T, C_out]."""
        if self.fused is False:
            return self.forward_ref(x)
        act, d = self.activation, self.dilation
        # self.fused None lets each call dispatch on the device; True forces the kernels
        conv = lambda inp, c, **kw: causal_conv1d(inp, c.weight, c.bias, d, act, fused=self.fused, **kw)  # noqa: E731
        h = self.dropout(conv(x, self.conv1))
        res = self._residual(x)
        if not self.training or self.dropout.p == 0.0:
            return conv(h, self.conv2, residual=res)
        out = self.dropout(conv(h, self.conv2))
        return activation_ref(out + res, act)

    def forward_ref(self, x: torch.Tensor) -> torch.Tensor:
        """The plain reference path, step by step. x: [B, T, C_in] -> [B, T, C_out]."""
        act, d = self.activation, self.dilation
        h = self.dropout(causal_conv1d_ref(x, self.conv1.weight, self.conv1.bias, d, act))
        out = self.dropout(causal_conv1d_ref(h, self.conv2.weight, self.conv2.bias, d, act))
        return activation_ref(out + self._residual(x), act)

    def forward_channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """The CPU inference path: x [B, C_in, T] -> [B, C_out, T]; dropout must be inactive
        (eval mode or p = 0). Same arithmetic as ``forward_ref`` in the conv's own layout."""
        act, d, t = self.activation, self.dilation, x.shape[-1]
        pad = (self.conv1.kernel_size[0] - 1) * d
        # the convolution pads both ends itself (no padded copy of the input); the first T
        # outputs are the causal ones (output t sees inputs t - pad .. t)
        h = activation_ref(F.conv1d(x, self.conv1.weight, self.conv1.bias, dilation=d, padding=pad)[..., :t], act)
        out = activation_ref(F.conv1d(h, self.conv2.weight, self.conv2.bias, dilation=d, padding=pad)[..., :t], act)
        res = x if self.downsample is None else F.conv1d(x, self.downsample.weight, self.downsample.bias)
        return activation_ref(out + res, act)

    def dropout_active(self) -> bool:
        return self.training and self.dropout.p > 0.0


class TCN(nn.Module):
    """Stack of TemporalBlocks, dilation 2**i at level i. x: [B, T, in_channels] -> [B, T, channels[-1]].

    The receptive field is 1 + 2 * (kernel_size - 1) * (2**len(channels) - 1) frames.
    """

    def __init__(self, in_channels: int, channels: list[int], kernel_size: int = 3,
                 dropout: float = 0.0, activation: str = "relu", weight_norm: bool = False,
                 fused: bool | None = None):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or any(c < 1 for c in channels) or in_channels < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints and in_channels >= 1, "
                             f"got in_channels={in_channels}, channels={channels}")
        widths = [in_channels, *channels]
        self.blocks = nn.ModuleList(
            TemporalBlock(widths[i], widths[i + 1], kernel_size, 2 ** i, dropout, activation,
                          weight_norm, fused)
            for i in range(len(channels))
        )
        self.in_channels, self.out_channels = in_channels, channels[-1]
        self.kernel_size = kernel_size

    @property
    def fused(self) -> bool | None:
        return self.blocks[0].fused

    @fused.setter
    def fused(self, value: bool | None) -> None:
        for block in self.blocks:
            block.fused = value

    def channels_first_path(self, x: torch.Tensor) -> bool:
        """Whether forward takes the channels-first CPU path for x (see the module docstring)."""
        return (self.fused is None and use_channels_first(x)
                and not any(b.dropout_active() for b in self.blocks))

    @property
    def receptive_field(self) -> int:
        return 1 + 2 * (self.kernel_size - 1) * (2 ** len(self.blocks) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, in_channels] -> [B, T, out_channels]."""
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f"TCN expects x: [B, T, {self.in_channels}], got {tuple(x.shape)}")
        if self.channels_first_path(x):
            h = x.transpose(1, 2)
            for block in self.blocks:
                h = block.forward_channels_first(h)
            return h.transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return x
