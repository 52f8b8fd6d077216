"""Which device and which compute precision: the one resolver every stage and command uses."""
from __future__ import annotations

import contextlib


def resolve_device(name: str = "auto"):
    """"auto" -> CUDA when available, else CPU; "cpu" / "cuda" / "cuda:N" as given.

    Asking for CUDA on a machine without it is an error here, before any work starts.
    """
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r} is not a device name (auto / cpu / cuda / cuda:N): {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for, but CUDA is not available on this machine")
    return dev


def resolve_precision(precision: str, device) -> str:
    """"auto" -> "bf16" on CUDA, "fp32" elsewhere; validates the name."""
    import torch

    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(device, precision: str = "auto"):
    """Autocast context for the encoder's forward: bf16 where asked (GPU by default), else none."""
    import torch

    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
