"""Encoder options shared by the command lines (``predict``, ``extract``): ``--int8``.

``--int8`` swaps the CLIP encoder for its dynamic-int8 copy (``affaccel.nn.quantize``): CPU
only, never on by default, features close to but not equal to fp32 (measured cosine and
validation effect: docs/benchmarks.md). No torch import here: the parser is built first.
"""
from __future__ import annotations

INT8_HELP = ("CPU only: run the CLIP encoder with dynamic int8 Linear layers (faster on ViT towers, "
             "slightly different features; see docs/benchmarks.md). Off by default")


def add_encoder_arguments(p):
    """Add --int8 to an argparse parser; returns the parser."""
    p.add_argument("--int8", action="store_true", help=INT8_HELP)
    return p


def check_int8(int8: bool, device) -> None:
    """ValueError when --int8 is asked for on a device that is not the CPU."""
    if int8 and str(device) != "cpu":
        raise ValueError(f"--int8 runs the encoder on the CPU only; got device {device} "
                         "(add --device cpu, or drop --int8)")


def apply_encoder_arguments(args, predictor):
    """The predictor with its encoder quantized when ``args.int8`` (ValueError off the CPU)."""
    if getattr(args, "int8", False) and predictor.encoder is not None:
        from affaccel.nn.quantize import quantize_encoder

        check_int8(True, predictor.device.type)
        predictor.encoder = quantize_encoder(predictor.encoder)
    return predictor


__all__ = ["add_encoder_arguments", "apply_encoder_arguments", "check_int8", "INT8_HELP"]
